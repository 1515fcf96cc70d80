"""The malformed-input table: every case is run through the real ``hypersteer`` CLI in-process.

Each case writes one bad input (config, parquet, metadata, checkpoint, prompts file, judge
settings or CLI arguments) into a fresh work directory and returns the CLI arguments that read
it. ``tests/test_bad_inputs.py`` runs every case and requires a one-line error that names the
input, exit status 2, no traceback and an unchanged work directory. The same table, with the
messages actually observed, is the documentation:

    python tests/bad_input_cases.py > docs/bad-inputs.md
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline_fixture import METHOD, Pipeline, shared_pipeline  # noqa: E402

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "bad-inputs.md"


class Work:
    """One case's directory: ``inputs/`` (config, prompts, concepts) and ``dump/``."""

    def __init__(self, pipeline: Pipeline, root: Path):
        self.p = pipeline
        self.root = root
        self.inputs = root / "inputs"
        self.dump = root / "dump"
        self.inputs.mkdir(parents=True, exist_ok=True)
        self.dump.mkdir(parents=True, exist_ok=True)

    # inputs ---------------------------------------------------------------------------------
    def config(self, mutate: Callable[[dict], None] | None = None) -> str:
        cfg = json.loads(json.dumps(self.p.config))
        if mutate is not None:
            mutate(cfg)
        return str(self.p.write_config(self.inputs / "config.yaml", cfg))

    def config_text(self, text: str) -> str:
        path = self.inputs / "config.yaml"
        path.write_text(text)
        return str(path)

    def concepts(self, lines: list[str] | None = None) -> str:
        path = self.inputs / "concepts.jsonl"
        text = self.p.concepts.read_text() if lines is None else "".join(l + "\n" for l in lines)
        path.write_text(text)
        return str(path)

    def data_dump(self) -> Path:
        return self.p.copy_dump(self.dump, ("generate",))

    def trained_dump(self) -> Path:
        return self.p.copy_dump(self.dump, ("generate", "train"))

    @property
    def train_parquet(self) -> Path:
        return self.dump / "generate" / "train_data.parquet"

    @property
    def metadata(self) -> Path:
        return self.dump / "generate" / "metadata.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.dump / "train" / METHOD

    # commands -------------------------------------------------------------------------------
    def train(self, config: str | None = None, *extra: str) -> list[str]:
        if not (self.dump / "generate").exists():
            self.data_dump()
        return ["train", "--config", config or self.config(), "--data_dir", str(self.dump),
                "--dump_dir", str(self.dump), *extra]

    def inference(self, config: str | None = None, concepts: str | None = None) -> list[str]:
        if not (self.dump / "generate").exists():
            self.trained_dump()
        return ["inference", "--config", config or self.config(), "--dump_dir", str(self.dump),
                "--concepts", concepts or self.concepts()]

    def evaluate(self, config: str | None = None) -> list[str]:
        return ["evaluate", "--config", config or self.config(), "--dump_dir", str(self.dump),
                "--no_progress"]


# ------------------------------------------------------------------------------ case helpers

def _method(cfg: dict) -> dict:
    return cfg["train"]["models"][METHOD]


def _edit_parquet(w: Work, edit: Callable) -> None:
    import pandas as pd

    w.data_dump()
    frame = pd.read_parquet(w.train_parquet)
    frame = edit(frame)
    frame.to_parquet(w.train_parquet, index=False)


def _drop_column(frame):
    return frame.drop(columns=["output_concept"])


def _nan_output(frame):
    row = frame.index[frame["category"] == "positive"][3]
    frame.loc[row, "output"] = float("nan")
    return frame


def _string_ids(frame):
    frame["concept_id"] = "concept-" + frame["concept_id"].astype(str)
    return frame


def _unknown_id(frame):
    row = frame.index[frame["category"] == "positive"][0]
    frame.loc[row, "concept_id"] = 9999
    return frame


def _edit_metadata(w: Work, edit: Callable[[list[str]], list[str]]) -> None:
    w.data_dump()
    lines = w.metadata.read_text().splitlines()
    w.metadata.write_text("".join(l + "\n" for l in edit(lines)))


def _duplicate_id(lines: list[str]) -> list[str]:
    second = json.loads(lines[1])
    second["concept_id"] = 0
    return [lines[0], json.dumps(second), *lines[2:]]


def _edit_checkpoint_config(w: Work, key: str, value) -> None:
    w.trained_dump()
    path = w.checkpoint / "hypersteer_config.json"
    saved = json.loads(path.read_text())
    saved["base_model"][key] = value
    path.write_text(json.dumps(saved, indent=2))


def _truncate_weights(w: Work) -> None:
    w.trained_dump()
    path = w.checkpoint / "hypernet.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _pickled_weights(w: Work) -> None:
    import torch

    w.trained_dump()
    path = w.checkpoint / "hypernet.safetensors"
    torch.save({"weight": torch.zeros(2)}, path)  # a .pt (pickle) under the safetensors name


def _steering_data(w: Work, drop: str | None = None, empty: bool = False) -> None:
    import pandas as pd

    path = w.dump / "inference" / "steering_data.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    if empty:
        path.write_bytes(b"")
        return
    frame = pd.DataFrame({
        "concept_id": [0, 0], "input_concept": ["the ocean"] * 2, "input_id": [0, 1],
        "factor": [1.0, 1.0], "input": ["Hi"] * 2, "original_prompt": ["Hi"] * 2,
        f"{METHOD}_steered_generation": ["waves", "tide"]})
    frame.drop(columns=[drop] if drop else []).to_parquet(path, index=False)


def _recorded_split(w: Work, num_prompts: int) -> None:
    path = w.dump / "inference" / "prompt_split.json"
    path.write_text(json.dumps({"num_prompts": num_prompts, "split_ratio": 0.5}))


def _prompts(w: Work, payload) -> str:
    path = w.inputs / "prompts.json"
    path.write_text(json.dumps(payload))

    def mutate(cfg: dict) -> None:
        cfg.setdefault("hypersteer", {})["prompts_path"] = str(path)
    return w.config(mutate)


def _set(path: tuple[str, ...], value) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        node = cfg
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return mutate


def _delete(path: tuple[str, ...]) -> Callable[[dict], None]:
    def mutate(cfg: dict) -> None:
        node = cfg
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return mutate


M = ("train", "models", METHOD)


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    what: str                                  # the malformed input, for the doc
    setup: Callable[[Work], list[str]]         # writes the bad input, returns CLI argv
    names: tuple[str, ...]                     # must appear in the error line (after normalising)
    usage: bool = False                        # an argparse usage error (usage line + error line)


CASES: list[Case] = [
    # configs -----------------------------------------------------------------------------------
    Case("config-unknown-key", "config", "unknown key `train.models.HyperSteerXAttn.learning_rate`",
         lambda w: w.train(w.config(_set(M + ("learning_rate",), 0.1))),
         ("WORK/inputs/config.yaml", "learning_rate")),
    Case("config-wrong-type", "config", "`batch_size: eight` (string for an integer)",
         lambda w: w.train(w.config(_set(M + ("batch_size",), "eight"))),
         ("WORK/inputs/config.yaml", "batch_size", "'eight'")),
    Case("config-bad-value", "config", "`lr: -1` (impossible value)",
         lambda w: w.train(w.config(_set(M + ("lr",), -1.0))),
         ("WORK/inputs/config.yaml", "lr", "-1")),
    Case("config-missing-layer", "config", "no `train.layer`",
         lambda w: w.train(w.config(_delete(("train", "layer")))),
         ("WORK/inputs/config.yaml", "train.layer")),
    Case("config-unknown-method", "config", "`--method hypersteer_banana`",
         lambda w: w.train(None, "--method", "hypersteer_banana"),
         ("'hypersteer_banana'", "unknown HyperSteer method")),
    Case("config-inference-method-not-trained", "config",
         "`inference.models` lists HyperSteerNoContext, `train.models` does not",
         lambda w: w.inference(w.config(_set(("inference", "models"),
                                            [METHOD, "HyperSteerNoContext"]))),
         ("WORK/inputs/config.yaml", "inference.models", "'HyperSteerNoContext'")),
    Case("config-layer-out-of-range", "config", "`train.layer: 7` for a 4-layer base model",
         lambda w: w.train(w.config(_set(("train", "layer"), 7))),
         ("steering_layer", "7", "4 layers")),
    Case("config-num-blocks-too-deep", "config", "`num_blocks: 9` > base depth 4",
         lambda w: w.train(w.config(_set(M + ("num_blocks",), 9))),
         ("num_blocks", "9", "depth (4)")),
    Case("config-heads-not-dividing", "config", "`cross_attention_heads: 5` for width 64",
         lambda w: w.train(w.config(_set(M + ("cross_attention_heads",), 5))),
         ("cross_attention_heads", "5", "64")),
    Case("config-empty-yaml", "config", "an empty YAML file",
         lambda w: w.train(w.config_text("")),
         ("WORK/inputs/config.yaml", "expected a mapping")),
    Case("config-yaml-syntax", "config", "YAML syntax error",
         lambda w: w.train(w.config_text("train: [unclosed\n")),
         ("WORK/inputs/config.yaml", "not valid YAML")),
    Case("config-python-tag", "config",
         "`!!python/object/apply:os.mkdir` tag (would run code under yaml.load)",
         lambda w: w.train(w.config_text(
             f"train: !!python/object/apply:os.mkdir ['{w.inputs / 'pwned'}']\n")),
         ("WORK/inputs/config.yaml", "not valid YAML")),
    Case("config-not-found", "config", "`--config` names a missing file",
         lambda w: w.train(str(w.inputs / "nope.yaml")),
         ("WORK/inputs/nope.yaml", "not found")),
    Case("config-factor-not-number", "config", "`inference.steering_factors: [1.0, big]`",
         lambda w: w.inference(w.config(_set(("inference", "steering_factors"), [1.0, "big"]))),
         ("WORK/inputs/config.yaml", "steering_factors", "'big'")),
    # parquet files -----------------------------------------------------------------------------
    Case("parquet-missing-column", "parquet", "train_data.parquet without `output_concept`",
         lambda w: (_edit_parquet(w, _drop_column), w.train())[1],
         ("WORK/dump/generate/train_data.parquet", "output_concept")),
    Case("parquet-empty-file", "parquet", "train_data.parquet of 0 bytes",
         lambda w: (w.data_dump(), w.train_parquet.write_bytes(b""), w.train())[2],
         ("WORK/dump/generate/train_data.parquet", "cannot read parquet")),
    Case("parquet-nan-output", "parquet", "NaN in the `output` column of a positive row",
         lambda w: (_edit_parquet(w, _nan_output), w.train())[1],
         ("WORK/dump/generate/train_data.parquet", "'output'", "nan")),
    Case("parquet-wrong-dtype", "parquet", "`concept_id` holds strings (`concept-0`)",
         lambda w: (_edit_parquet(w, _string_ids), w.train())[1],
         ("WORK/dump/generate/train_data.parquet", "concept_id", "'concept-0'")),
    Case("parquet-unknown-concept", "parquet", "a row's `concept_id` 9999 is not in metadata.jsonl",
         lambda w: (_edit_parquet(w, _unknown_id), w.train())[1],
         ("WORK/dump/generate/train_data.parquet", "9999", "metadata.jsonl")),
    Case("steering-data-missing-column", "parquet",
         "inference/steering_data.parquet without `input_concept` (evaluate)",
         lambda w: (_steering_data(w, drop="input_concept"), w.evaluate())[1],
         ("WORK/dump/inference/steering_data.parquet", "input_concept")),
    Case("evaluate-other-prompt-split", "stage",
         "evaluate with a config whose prompt split differs from the one inference recorded",
         lambda w: (_steering_data(w), _recorded_split(w, 4), w.evaluate())[2],
         ("WORK/dump/inference/prompt_split.json", "steering_num_of_examples=4")),
    Case("steering-data-empty-file", "parquet", "inference/steering_data.parquet of 0 bytes",
         lambda w: (_steering_data(w, empty=True), w.evaluate())[1],
         ("WORK/dump/inference/steering_data.parquet", "cannot read parquet")),
    # metadata ----------------------------------------------------------------------------------
    Case("metadata-duplicate-id", "metadata", "two lines with `concept_id` 0",
         lambda w: (_edit_metadata(w, _duplicate_id), w.train())[1],
         ("WORK/dump/generate/metadata.jsonl:2", "duplicate concept_id 0")),
    Case("metadata-missing-file", "metadata", "`--concepts` names a missing file",
         lambda w: w.inference(concepts=str(w.inputs / "missing.jsonl")),
         ("WORK/inputs/missing.jsonl", "not found")),
    Case("metadata-bad-json", "metadata", "line 3 is not JSON",
         lambda w: (_edit_metadata(w, lambda ls: ls[:2] + ["{not json"] + ls[3:]), w.train())[1],
         ("WORK/dump/generate/metadata.jsonl:3", "invalid JSON")),
    Case("metadata-no-concept-id", "metadata", "a `--concepts` line without `concept_id`",
         lambda w: w.inference(concepts=w.concepts([
             w.p.concepts.read_text().splitlines()[0],
             json.dumps({"concept": "the ocean", "ref": "x", "concept_genres_map": {}})])),
         ("WORK/inputs/concepts.jsonl:2", "concept_id")),
    # checkpoints -------------------------------------------------------------------------------
    Case("checkpoint-missing", "checkpoint", "inference on a dump that was never trained",
         lambda w: (w.data_dump(), w.inference())[1],
         ("WORK/dump/train/HyperSteerXAttn", "no trained HyperSteer checkpoint")),
    Case("checkpoint-hidden-size", "checkpoint", "checkpoint trained for hidden size 128",
         lambda w: (_edit_checkpoint_config(w, "hidden_size", 128), w.inference())[1],
         ("WORK/dump/train/HyperSteerXAttn", "hidden_size=128", "hidden_size=64")),
    Case("checkpoint-layer-count", "checkpoint", "checkpoint trained for an 8-layer base model",
         lambda w: (_edit_checkpoint_config(w, "num_hidden_layers", 8), w.inference())[1],
         ("WORK/dump/train/HyperSteerXAttn", "num_hidden_layers=8", "num_hidden_layers=4")),
    Case("checkpoint-vocab-size", "checkpoint",
         "checkpoint trained with a 4096-token vocabulary (tokenizer/embedding mismatch)",
         lambda w: (_edit_checkpoint_config(w, "vocab_size", 4096), w.inference())[1],
         ("WORK/dump/train/HyperSteerXAttn", "vocab_size=4096", "vocab_size=2048")),
    Case("checkpoint-truncated", "checkpoint", "hypernet.safetensors cut in half",
         lambda w: (_truncate_weights(w), w.inference())[1],
         ("WORK/dump/train/HyperSteerXAttn/hypernet.safetensors", "not a valid safetensors")),
    Case("checkpoint-pickle", "checkpoint", "hypernet.safetensors replaced by a torch.save pickle",
         lambda w: (_pickled_weights(w), w.inference())[1],
         ("WORK/dump/train/HyperSteerXAttn/hypernet.safetensors", "refused")),
    Case("checkpoint-config-not-json", "checkpoint", "hypersteer_config.json is not JSON",
         lambda w: (w.trained_dump(),
                    (w.checkpoint / "hypersteer_config.json").write_text("{\"hypersteer\": "),
                    w.inference())[2],
         ("WORK/dump/train/HyperSteerXAttn/hypersteer_config.json", "not valid JSON")),
    # prompts file ------------------------------------------------------------------------------
    Case("prompts-not-list", "prompts", "prompts file is a JSON object, not a list",
         lambda w: w.inference(_prompts(w, {"instruction": "Write a poem."})),
         ("WORK/inputs/prompts.json", "JSON list")),
    Case("prompts-item-without-instruction", "prompts", "item 1 has no `instruction`",
         lambda w: w.inference(_prompts(w, [{"instruction": "Hi."}, {"input": "Write."}])),
         ("WORK/inputs/prompts.json", "item 1", "'instruction'")),
    Case("prompts-missing-file", "prompts", "`hypersteer.prompts_path` names a missing file",
         lambda w: w.inference(w.config(_set(("hypersteer", "prompts_path"),
                                            str(w.inputs / "nope.json")))),
         ("WORK/inputs/nope.json", "not found")),
    # judge config ------------------------------------------------------------------------------
    Case("judge-negative-concurrency", "judge", "`hypersteer.judge.concurrency: -1`",
         lambda w: w.evaluate(w.config(_set(("hypersteer", "judge", "concurrency"), -1))),
         ("WORK/inputs/config.yaml", "hypersteer.judge.concurrency", "-1")),
    Case("judge-unknown-key", "judge", "`hypersteer.judge.api_key` (keys come from the env only)",
         lambda w: w.evaluate(w.config(_set(("hypersteer", "judge", "api_key"), "sk-x"))),
         ("WORK/inputs/config.yaml", "hypersteer.judge", "'api_key'")),
    # stage inputs ------------------------------------------------------------------------------
    Case("evaluate-before-inference", "stage", "evaluate on a dump without inference output",
         lambda w: w.evaluate(),
         ("WORK/dump/inference/steering_data.parquet", "not found")),
    Case("report-before-evaluate", "stage", "report on a dump without evaluate output",
         lambda w: ["report", "--dump_dir", str(w.dump)],
         ("WORK/dump/evaluate/steering.jsonl", "not found")),
    # CLI arguments -----------------------------------------------------------------------------
    Case("cli-unknown-command", "cli", "`hypersteer trian`",
         lambda w: ["trian"], ("'trian'", "unknown command")),
    Case("cli-missing-config", "cli", "`hypersteer inference` without `--config`",
         lambda w: ["inference", "--dump_dir", str(w.dump)], ("--config",), usage=True),
    Case("cli-bad-mode", "cli", "`--mode steer`",
         lambda w: ["inference", "--config", w.config(), "--dump_dir", str(w.dump),
                    "--mode", "steer"], ("--mode", "'steer'"), usage=True),
]


# ------------------------------------------------------------------------------------ running

@dataclass
class Outcome:
    case: Case
    argv: list[str]
    code: object                       # exit status (None if an exception escaped)
    stdout: str
    stderr: str
    logs: str
    exception: str | None              # formatted traceback of an escaped exception
    changed: list[str] = field(default_factory=list)  # paths added/modified by the command

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def message(self) -> str:
        return self.error_lines[-1] if self.error_lines else ""


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter().format(record))


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = ("dir",) if path.is_dir() else (path.stat().st_size, path.stat().st_mtime_ns)
    return out


def normalise(text: str, work: Path, pipeline: Pipeline) -> str:
    for path, name in ((work, "WORK"), (pipeline.base_model, "BASE_MODEL")):
        text = text.replace(str(path.resolve()), name).replace(str(path), name)
    return text


def run_case(case: Case, pipeline: Pipeline, root: Path) -> Outcome:
    from axbench_hypersteer.cli import main

    work = Work(pipeline, root)
    argv = case.setup(work)
    before = snapshot(root)
    out, err, records = io.StringIO(), io.StringIO(), _Records()
    logging.getLogger().addHandler(records)
    exception, code = None, None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse usage errors
                code = exc.code
    except Exception:  # noqa: BLE001 - reported by the test as a failure
        exception = traceback.format_exc()
    finally:
        logging.getLogger().removeHandler(records)
    after = snapshot(root)
    changed = sorted(k for k in after if before.get(k) != after[k])
    outcome = Outcome(case, argv, code, out.getvalue(), err.getvalue(), "\n".join(records.lines),
                      exception, changed)
    outcome.stderr = normalise(outcome.stderr, root, pipeline)
    return outcome


def problems(outcome: Outcome) -> list[str]:
    """Why an outcome breaks the contract (empty list: it does not)."""
    case, found = outcome.case, []
    if outcome.exception:
        found.append(f"exception escaped:\n{outcome.exception}")
    if outcome.code != 2:
        found.append(f"exit status {outcome.code!r}, expected 2")
    for stream, text in (("stdout", outcome.stdout), ("stderr", outcome.stderr),
                         ("logs", outcome.logs)):
        if "Traceback" in text:
            found.append(f"traceback in {stream}: {text}")
    lines = outcome.error_lines
    if not lines:
        found.append("nothing on stderr")
    elif case.usage:
        if not lines[0].startswith("usage:") or ": error: " not in lines[-1]:
            found.append(f"expected an argparse usage line and one error line, got {lines}")
    elif len(lines) != 1:
        found.append(f"expected ONE line on stderr, got {len(lines)}: {lines}")
    message = outcome.message
    if "error" not in message:
        found.append(f"error line does not say 'error': {message!r}")
    for name in case.names:
        if name not in message:
            found.append(f"error line does not name {name!r}: {message!r}")
    if outcome.changed:
        found.append(f"the command changed files: {outcome.changed}")
    return found


def cell(text: str) -> str:
    """Text as it appears in a markdown table cell of the doc."""
    return text.replace("|", "\\|").replace("\n", " ")


def doc_row(outcome: Outcome) -> str:
    o = outcome
    return (f"| `{o.case.id}` | {o.case.area} | {cell(o.case.what)} | "
            f"`hypersteer {o.argv[0]}` | `{cell(o.message)}` |")


def markdown(outcomes: list[Outcome]) -> str:
    lines = [
        "# Bad inputs",
        "",
        "Every malformed input below is run through the real `hypersteer` CLI by",
        "`tests/test_bad_inputs.py`, from the table in `tests/bad_input_cases.py`. Each must fail",
        "with exit status 2, no traceback, no file written or changed, and one error line naming",
        "the file, key, column or value (argparse usage errors print their usage line first).",
        "`WORK` is the case's scratch directory (`WORK/inputs/` holds configs, prompts and",
        "concept lists, `WORK/dump/` the dump). Regenerate with",
        "",
        "    python tests/bad_input_cases.py > docs/bad-inputs.md",
        "",
        f"{len(outcomes)} cases.",
        "",
        "| case | area | malformed input | command | error (stderr, exit status 2) |",
        "|---|---|---|---|---|",
    ]
    lines += [doc_row(o) for o in outcomes]
    return "\n".join(lines) + "\n"


def main() -> int:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="hypersteer-bad-inputs-") as tmp:
        tmp = Path(tmp)
        pipeline = shared_pipeline(tmp / "pipeline")
        outcomes = [run_case(case, pipeline, tmp / case.id) for case in CASES]
    broken = [(o.case.id, problems(o)) for o in outcomes if problems(o)]
    for case_id, found in broken:
        print(f"{case_id}: {found}", file=sys.stderr)
    sys.stdout.write(markdown(outcomes))
    return 1 if broken else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
