"""The judge-free metric: steered loss on reference answers, per factor and split, into the report."""

import json

import pytest
import torch

from axbench_hypersteer import cli
from axbench_hypersteer.stages import common
from axbench_hypersteer.stages.report import summarize

from pipeline_fixture import METHOD, shared_pipeline


@pytest.fixture(scope="module")
def pipeline(tokenizer):
    return shared_pipeline(tokenizer=tokenizer)


def test_steering_loss_stage_writes_records_the_report_reads(pipeline, tmp_path, capsys):
    dump = pipeline.copy_dump(tmp_path / "dump")
    config = pipeline.write_config(tmp_path / "config.yaml")
    rc = cli.main(["steering-loss", "--config", str(config), "--dump_dir", str(dump),
                   "--data_dir", str(dump), "--concepts", str(pipeline.concepts),
                   "--max_examples", "4"])
    assert rc == 0
    assert f"steering-loss {METHOD}: 100%" in capsys.readouterr().err  # its progress bar
    records = [json.loads(line) for line in
               (dump / "evaluate" / "steering_loss.jsonl").read_text().splitlines()]
    factors = pipeline.config["inference"]["steering_factors"]
    # 4 concepts x 2 splits (4 examples halved) x every factor, one method
    assert len(records) == 4 * 2 * len(factors)
    assert {r["split"] for r in records} == {"steering", "steering_test"}
    assert {r["method"] for r in records} == {METHOD}
    by_key = {(r["concept_id"], r["split"], r["factor"]): r["loss"] for r in records}
    # factor 0 is the unsteered model: every concept's loss at 0 is the same function of the
    # same examples, so it must differ from the steered loss at a non-zero factor
    nonzero = [f for f in factors if f != 0.0][0]
    assert any(by_key[(c, "steering", 0.0)] != by_key[(c, "steering", nonzero)]
               for c in {r["concept_id"] for r in records})

    # The report picks the loss up (it needs the judge files too: write minimal ones)
    for mode in ("steering", "steering_test"):
        lines = [json.dumps({"concept_id": c, "results": {"LMJudgeEvaluator": {METHOD: {
            "lm_judge_rating": [0.0] * len(factors), "relevance_concept_ratings": [0.0] * len(factors),
            "relevance_instruction_ratings": [0.0] * len(factors),
            "fluency_ratings": [0.0] * len(factors), "factor": factors}}}})
            for c in sorted({r["concept_id"] for r in records})]
        (dump / "evaluate" / f"{mode}.jsonl").write_text("\n".join(lines) + "\n")
    table = summarize(dump)
    assert "loss_best_mean" in table.columns
    assert table.loc[table["method"] == METHOD, "loss_best_mean"].notna().all()


def test_steering_loss_loads_the_base_as_every_stage_does(pipeline, tmp_path, monkeypatch):
    """``use_bf16`` on a GPU: the base model in bf16 (and bf16 autocast), as train and inference
    load it; steering-loss used to load fp32 whatever the config said. Loading is observed (and
    done on CPU in fp32) so that the test runs without a GPU."""
    requested = []
    real_load_base = common.load_base

    def observed(name, dtype=torch.float32, device=None):
        requested.append((dtype, device))
        return real_load_base(name)

    monkeypatch.setattr(common, "load_base", observed)
    monkeypatch.setattr(common, "stage_device", lambda: "cuda")
    config = json.loads(json.dumps(pipeline.config))
    config["train"]["use_bf16"] = True
    dump = pipeline.copy_dump(tmp_path / "dump")
    assert cli.main(["steering-loss", "--config", str(pipeline.write_config(tmp_path / "c.yaml",
                                                                              config)),
                     "--dump_dir", str(dump), "--data_dir", str(dump),
                     "--concepts", str(pipeline.concepts), "--max_examples", "2"]) == 0
    assert requested == [(torch.bfloat16, "cuda")]
