"""Reliability and security: a killed inference resumes, writes are atomic, loads are safe, and the
judge's API key never reaches a file or a log.

(Training kill/resume is in tests/test_trainer.py and judge HTTP faults in tests/test_judge.py.)
"""

from __future__ import annotations

import ast
import json
import logging
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from axbench_hypersteer import cli
from axbench_hypersteer.model import fileio
from axbench_hypersteer.model.config import ConfigError, HyperSteerConfig
from axbench_hypersteer.model.fileio import UnsafeFileError, load_tensors
from axbench_hypersteer.model.hypersteer import HyperSteer
from axbench_hypersteer.model.loading import load_base
from axbench_hypersteer.stages import inference_stage as stage
from axbench_hypersteer.stages.run_config import load_run_config
from pipeline_fixture import METHOD, N_CONCEPTS, one_torch_thread, pipeline  # noqa: F401 (fixtures)

PACKAGE = Path(__file__).resolve().parents[1] / "axbench_hypersteer"


# ------------------------------------------------------------------------ inference kill/resume

# Runs `python -m axbench_hypersteer.cli ...` (runpy, as -m does) with one test hook: one concept
# per generate call, and on the second concept's part file the writer stops half-way through the
# temp file and waits to be SIGKILLed, so the kill lands at the worst moment, every time.
KILLABLE_CLI = r"""
import os, runpy, sys, time
import torch
torch.set_num_threads(int(os.environ["HS_TEST_THREADS"]))
import axbench_hypersteer.stages.inference_stage as stage
stage.CONCEPTS_PER_CALL = 1
real_write = stage._write_parquet
parts = []

def write(path, frame):
    if path.parent.parent.name == "parts":
        parts.append(path)
        if len(parts) == 2:
            def torn(tmp):
                frame.to_parquet(tmp, index=False)
                data = tmp.read_bytes()
                tmp.write_bytes(data[: len(data) // 2])
                open(os.environ["HS_TEST_READY"], "w").close()
                time.sleep(600)
            stage.atomic_write(path, torn)
    real_write(path, frame)

stage._write_parquet = write
runpy.run_module("axbench_hypersteer.cli", run_name="__main__", alter_sys=True)
"""


def _concepts(pipeline) -> dict[int, str]:
    lines = pipeline.concepts.read_text().splitlines()
    return {e["concept_id"]: e["concept"] for e in map(json.loads, lines)}


def test_killed_inference_resumes_only_missing_concepts(pipeline, tmp_path, monkeypatch):
    config = str(pipeline.write_config(tmp_path / "config.yaml"))
    concepts = _concepts(pipeline)
    assert len(concepts) == N_CONCEPTS

    def argv(dump: Path) -> list[str]:
        return ["inference", "--config", config, "--dump_dir", str(dump), "--mode", "steering",
                "--concepts", str(pipeline.concepts)]

    # The reference: one uninterrupted run (same batching: one concept per generate call).
    monkeypatch.setattr(stage, "CONCEPTS_PER_CALL", 1)
    reference_dump = pipeline.copy_dump(tmp_path / "reference")
    assert cli.main(argv(reference_dump)) == 0
    reference = pd.read_parquet(reference_dump / "inference" / "steering_data.parquet")
    rows_per_concept = 2  # 2 factors x 1 prompt of the `steering` half of 2 prompts
    assert len(reference) == N_CONCEPTS * rows_per_concept

    # The same command in a subprocess, SIGKILLed while writing the second concept's part.
    dump = pipeline.copy_dump(tmp_path / "killed")
    ready, log = tmp_path / "ready", tmp_path / "killed.log"
    env = {**os.environ, "HS_TEST_READY": str(ready), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HS_TEST_THREADS": str(torch.get_num_threads())}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", KILLABLE_CLI, *argv(dump)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert proc.poll() is None, f"inference exited early:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "inference never reached the second concept"
            time.sleep(0.05)
        parts_dir = dump / "inference" / "parts" / "steering"
        finished = sorted(parts_dir.glob("concept_*.parquet"))
        assert len(finished) == 1, finished
        first = finished[0]
        first_state = (first.stat().st_mtime_ns, first.read_bytes())
        # finished work is in its part; the merged output is written once, at the end
        assert not (dump / "inference" / "steering_data.parquet").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    # The dying writer left only its hidden temp file: no torn part under a real name.
    assert list(parts_dir.glob(".concept_*.tmp")), sorted(p.name for p in parts_dir.iterdir())
    assert sorted(parts_dir.glob("concept_*.parquet")) == [first]

    # Resume (the same command) generates exactly the three missing concepts.
    generated: list[str] = []
    real_steer_rows = stage.steer_rows

    def counting(hs, rows, *args, **kwargs):
        generated.extend(r.steering_prompt for r in rows)
        return real_steer_rows(hs, rows, *args, **kwargs)

    monkeypatch.setattr(stage, "steer_rows", counting)
    assert cli.main(argv(dump)) == 0
    done_id = int(first.stem.split("_")[1])
    missing = {text for cid, text in concepts.items() if cid != done_id}
    assert set(generated) == missing
    assert len(generated) == len(missing) * rows_per_concept
    assert (first.stat().st_mtime_ns, first.read_bytes()) == first_state  # untouched
    assert not list(parts_dir.glob(".*.tmp"))  # the dead writer's temporary is cleaned up

    resumed = pd.read_parquet(dump / "inference" / "steering_data.parquet")
    pd.testing.assert_frame_equal(resumed, reference, check_exact=False, rtol=1e-5)
    gen = f"{METHOD}_steered_generation"
    assert resumed[gen].tolist() == reference[gen].tolist()  # greedy: identical text

    # A finished run is not redone at all.
    generated.clear()
    assert cli.main(argv(dump)) == 0
    assert generated == []


# ------------------------------------------------------------------------------- atomic writes


def test_inference_merges_the_parts_once(pipeline, tmp_path, monkeypatch):
    """steering_data.parquet is rebuilt from the parts once, at the end: rebuilding it after every
    chunk re-read every finished part (quadratic I/O for Concept500 x 14 factors)."""
    config = str(pipeline.write_config(tmp_path / "config.yaml"))
    monkeypatch.setattr(stage, "CONCEPTS_PER_CALL", 1)
    merges = []
    real_merge = stage.merge_parts
    monkeypatch.setattr(stage, "merge_parts", lambda d: merges.append(d) or real_merge(d))
    dump = pipeline.copy_dump(tmp_path / "dump")
    assert cli.main(["inference", "--config", config, "--dump_dir", str(dump), "--mode",
                     "steering", "--concepts", str(pipeline.concepts)]) == 0
    assert len(merges) == 1
    merged = pd.read_parquet(dump / "inference" / "steering_data.parquet")
    assert merged["concept_id"].nunique() == N_CONCEPTS

def _fail_replace(monkeypatch):
    def replace(src, dst):
        raise OSError(28, "No space left on device (injected)")
    monkeypatch.setattr(os, "replace", replace)


def test_failed_rename_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "evaluate" / "steering.jsonl"
    target.parent.mkdir()
    target.write_text("old line\n")
    _fail_replace(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        fileio.atomic_write_text(target, "new line\n" * 1000)
    assert target.read_text() == "old line\n"
    assert sorted(os.listdir(target.parent)) == ["steering.jsonl"]


def test_writer_dying_half_way_keeps_the_old_file(tmp_path):
    target = tmp_path / "steering_data.parquet"
    target.write_bytes(b"old")

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"new but incomp")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(target, half)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["steering_data.parquet"]


def test_write_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events: list[tuple[str, int]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = fileio.atomic_write_json(tmp_path / "summary.json", {"steps": 2})
    monkeypatch.undo()
    inode, dir_inode = target.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", inode), ("replace", inode), ("fsync", dir_inode)]
    assert json.loads(target.read_text()) == {"steps": 2}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_leaves_ordinary_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as f:
            f.write("x")
        atomic = fileio.atomic_write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(atomic.stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask


def test_remove_interrupted_writes_takes_only_temporaries(tmp_path):
    (tmp_path / ".concept_3.parquet.ab12.tmp").write_bytes(b"torn")
    (tmp_path / ".step_00000007.cd34.tmp").mkdir()
    (tmp_path / ".step_00000007.cd34.tmp" / "hypernet.safetensors").write_bytes(b"half")
    keep = [tmp_path / "concept_3.parquet", tmp_path / ".hidden_config", tmp_path / "notes.tmp",
            tmp_path / "step_00000005"]
    for path in keep[:3]:
        path.write_bytes(b"finished")
    keep[3].mkdir()
    removed = fileio.remove_interrupted_writes(tmp_path)
    assert sorted(p.name for p in removed) == [".concept_3.parquet.ab12.tmp",
                                               ".step_00000007.cd34.tmp"]
    assert sorted(tmp_path.iterdir()) == sorted(keep)
    assert fileio.remove_interrupted_writes(tmp_path / "absent") == []


def test_inference_merge_failure_keeps_previous_steering_data(tmp_path, monkeypatch):
    parts = tmp_path / "inference" / "parts" / "steering"
    for cid in (0, 1):
        frame = pd.DataFrame({"concept_id": [cid], "input_id": [0], "factor": [1.0],
                              "text": [f"c{cid}"]})
        fileio.atomic_write(parts / f"concept_{cid}.parquet",
                            lambda p, f=frame: f.to_parquet(p, index=False))
    out = stage.merge_parts(tmp_path)
    before = out.read_bytes()
    fileio.atomic_write(parts / "concept_2.parquet", lambda p: pd.DataFrame(
        {"concept_id": [2], "input_id": [0], "factor": [1.0], "text": ["c2"]}).to_parquet(p))
    _fail_replace(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        stage.merge_parts(tmp_path)
    assert out.read_bytes() == before
    assert pd.read_parquet(out)["concept_id"].tolist() == [0, 1]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_report_failure_keeps_previous_report(tmp_path, monkeypatch):
    from axbench_hypersteer.stages.report import write_report

    ratings = {"lm_judge_rating": [0.5, 1.0], "relevance_concept_ratings": [1.0, 1.0],
               "relevance_instruction_ratings": [1.0, 1.0], "fluency_ratings": [1.0, 1.0],
               "factor": [0.0, 1.0]}
    for name in ("steering", "steering_test"):
        lines = [json.dumps({"concept_id": c, "results": {"LMJudgeEvaluator": {METHOD: ratings}}})
                 for c in (0, 1)]
        (tmp_path / "evaluate").mkdir(exist_ok=True)
        (tmp_path / "evaluate" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    report = write_report({"results": tmp_path}, tmp_path / "report")
    before = {p.name: p.read_bytes() for p in report.parent.iterdir()}
    assert {"report.md", "results.csv"} <= set(before)
    _fail_replace(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        write_report({"results": tmp_path}, tmp_path / "report")
    assert {p.name: p.read_bytes() for p in report.parent.iterdir()} == before


# ------------------------------------------------------------------------------- safe loading

class Payload:
    """Unpickling this creates ``marker`` (a directory): proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_the_payload_is_live(tmp_path):
    """Guards the tests below: plain unpickling really does run the payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.is_dir()


@pytest.mark.parametrize("name", ["evil.pt", "evil.bin", "evil.safetensors", "targets_weight.pt"])
@pytest.mark.parametrize("nested", [False, True])
def test_load_tensors_refuses_pickled_code(tmp_path, name, nested):
    marker = tmp_path / "pwned"
    obj = {"weight": torch.zeros(2), "x": Payload(marker)} if nested else Payload(marker)
    path = tmp_path / name
    torch.save(obj, path)
    with pytest.raises(UnsafeFileError, match="refused"):
        load_tensors(path)
    assert not marker.exists()


def test_load_tensors_still_loads_plain_tensors(tmp_path):
    torch.save({"weight": torch.arange(3.0)}, tmp_path / "ok.pt")
    torch.save(torch.ones(2), tmp_path / "one.pt")
    fileio.save_tensors(tmp_path / "ok.safetensors", {"w": torch.arange(2.0)})
    assert load_tensors(tmp_path / "ok.pt")["weight"].tolist() == [0.0, 1.0, 2.0]
    assert load_tensors(tmp_path / "one.pt")["weight"].tolist() == [1.0, 1.0]
    assert load_tensors(tmp_path / "ok.safetensors")["w"].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("name", ["cut.pt", "cut.bin"])
def test_a_truncated_torch_file_is_reported_corrupt_not_unsafe(tmp_path, name):
    """A ``.pt`` cut short by a killed copy is damaged, not a code-executing pickle: the message
    must say "truncated or corrupt", not "refused"."""
    path = tmp_path / name
    torch.save({"weight": torch.arange(1000.0)}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(fileio.CorruptFileError, match=rf"{name}: not a readable torch file .*corrupt"):
        load_tensors(path)


def test_from_pretrained_refuses_a_pickled_checkpoint(pipeline, tmp_path):
    model, tokenizer = load_base(str(pipeline.base_model))
    checkpoint = pipeline.copy_dump(tmp_path / "dump", ("train",)) / "train" / METHOD
    assert HyperSteer.from_pretrained(checkpoint, model, tokenizer) is not None  # genuine: loads
    marker = tmp_path / "pwned"
    torch.save({"weight": Payload(marker)}, checkpoint / "hypernet.safetensors")
    with pytest.raises(UnsafeFileError, match="hypernet.safetensors"):
        HyperSteer.from_pretrained(checkpoint, model, tokenizer)
    assert not marker.exists()


@pytest.mark.parametrize("tag", ["os.system", "os.mkdir"])
def test_yaml_configs_cannot_run_code(tmp_path, tag):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if tag == "os.system" else str(marker)
    text = f"train: !!python/object/apply:{tag} ['{arg}']\n"
    path = tmp_path / "evil.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_run_config(path)
    with pytest.raises(ConfigError, match="evil.yaml"):
        HyperSteerConfig.from_yaml(path)
    assert cli.main(["train", "--config", str(path), "--data_dir", str(tmp_path),
                     "--dump_dir", str(tmp_path)]) == 2
    assert not marker.exists()
    yaml.unsafe_load(text)  # the same text under an unsafe loader does run (guards the test)
    assert marker.exists()


# Calls that can execute code while loading, keyed by (module alias, attribute) or builtin name.
UNSAFE_CALLS = {
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("dill", "load"),
    ("dill", "loads"), ("joblib", "load"), ("yaml", "load"), ("yaml", "unsafe_load"),
    ("yaml", "full_load"), ("yaml", "load_all"), ("yaml", "unsafe_load_all"), ("pd", "read_pickle"),
    ("pandas", "read_pickle"), ("marshal", "loads"), ("shelve", "open"),
}
UNSAFE_BUILTINS = {"eval", "exec", "__import__"}


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func, where = node.func, f"{filename}:{node.lineno}"
        if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
            found.append(f"{where}: {func.id}(")
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
            continue
        owner, attr = func.value.id, func.attr
        keywords = {k.arg: k.value for k in node.keywords}
        if (owner, attr) in UNSAFE_CALLS:
            found.append(f"{where}: {owner}.{attr}(")
        elif owner == "torch" and attr == "load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{where}: torch.load( without weights_only=True")
        elif owner in ("np", "numpy") and attr == "load":
            flag = keywords.get("allow_pickle")
            if isinstance(flag, ast.Constant) and flag.value is True:
                found.append(f"{where}: np.load(allow_pickle=True)")
    return found


def test_package_source_has_no_unsafe_loads():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = [hit for path in files for hit in
             unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE)))]
    assert not found, "\n".join(found)


def test_unsafe_call_checker_flags_each_pattern():
    bad = """
import pickle, yaml, torch
import numpy as np
pickle.load(f); yaml.load(s, Loader=yaml.Loader); eval("1"); exec("x=1")
torch.load(p); torch.load(p, weights_only=False); np.load(p, allow_pickle=True)
"""
    good = """
yaml.safe_load(s); torch.load(p, map_location="cpu", weights_only=True); model.eval(); np.load(p)
"""
    assert len(unsafe_calls(bad)) == 7
    assert unsafe_calls(good) == []


# ------------------------------------------------------------------------------------ secrets

def test_api_key_never_reaches_a_file_or_a_log(pipeline, tmp_path, monkeypatch, caplog, capsys):
    from axbench_hypersteer.judge.client import resolve_endpoint
    from axbench_hypersteer.judge.offline_server import start_offline_judge, stop_offline_judge

    key = f"sk-hstest-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    caplog.set_level(logging.DEBUG)
    dump = pipeline.copy_dump(tmp_path / "dump")
    server, url = start_offline_judge()
    try:
        config = json.loads(json.dumps(pipeline.config))
        config["hypersteer"]["judge"]["base_url"] = url
        config_path = str(pipeline.write_config(tmp_path / "config.yaml", config))
        assert resolve_endpoint(load_run_config(config_path).judge) == (url, key)  # key in use
        for mode in ("steering", "steering_test"):
            assert cli.main(["inference", "--config", config_path, "--dump_dir", str(dump),
                             "--mode", mode, "--concepts", str(pipeline.concepts)]) == 0
            assert cli.main(["evaluate", "--config", config_path, "--dump_dir", str(dump),
                             "--mode", mode, "--no_progress"]) == 0
        assert cli.main(["report", "--dump_dir", str(dump)]) == 0
    finally:
        stop_offline_judge(server)
    cache = (dump / "evaluate" / "judge_cache.jsonl").read_text()
    assert len(cache.splitlines()) >= N_CONCEPTS * 3  # the judge was really called
    assert (dump / "report" / "report.md").exists()

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20
    fragments = [key, key[-12:]]  # also the tail providers echo in masked form ("sk-...abcd")
    leaks = [str(p) for p in written for f in fragments if f.encode() in p.read_bytes()]
    assert not leaks
    out, err = capsys.readouterr()
    logs = caplog.text + "".join(str(r.args) for r in caplog.records)
    for text in (out, err, logs):
        assert not [f for f in fragments if f in text]
