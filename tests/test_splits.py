"""Held-in / held-out splits of the real Concept10 dump, written to tmp_path."""

import json
import shutil

import pandas as pd
import pytest

from axbench_hypersteer.model.errors import DataError
from axbench_hypersteer.stages.data import load_metadata, load_train_frame
from axbench_hypersteer.stages.splits import (load_eval_concepts, main, make_split,
                                                normalise_concept)


@pytest.fixture(scope="module")
def source(concept10_dir):
    gen = concept10_dir / "generate"
    return pd.read_parquet(gen / "train_data.parquet"), load_metadata(gen / "metadata.jsonl")


@pytest.fixture()
def concept500_metadata(concept10_dir):
    return concept10_dir.parents[1] / "concept500" / "prod_2b_l20_v1" / "generate" / "metadata.jsonl"


def read_split(out_dir):
    gen = out_dir / "generate"
    return (pd.read_parquet(gen / "train_data.parquet"), load_metadata(gen / "metadata.jsonl"),
            json.loads((gen / "split.json").read_text()))


def check_heldout_0_3(out_dir, source):
    raw, meta = source
    train, kept_meta, record = read_split(out_dir)
    removed_texts = {meta[0]["concept"], meta[3]["concept"]}
    assert not train["concept_id"].isin([0, 3]).any()
    assert not train["output_concept"].isin(removed_texts).any()
    expected = raw[~raw["concept_id"].isin([0, 3])].reset_index(drop=True)
    pd.testing.assert_frame_equal(train, expected)  # others intact, negatives kept
    assert (train["category"] == "negative").sum() == 216
    assert [m["concept_id"] for m in kept_meta] == [1, 2, 4, 5, 6, 7, 8, 9]
    assert record["mode"] == "heldout"
    assert record["removed"] == [{"concept_id": 0, "concept": meta[0]["concept"]},
                                 {"concept_id": 3, "concept": meta[3]["concept"]}]
    assert (record["training_concepts_before"], record["training_concepts_after"]) == (10, 8)
    assert (record["rows_before"], record["rows_after"]) == (936, 792)
    assert (record["eval_concepts"], record["eval_matched"], record["eval_not_found"]) == (2, 2, [])


def test_heldout_by_ids(concept10_dir, source, tmp_path):
    summary = make_split(concept10_dir, [0, 3], "heldout", tmp_path)
    assert "8 training concepts remain" in str(summary)
    check_heldout_0_3(tmp_path, source)
    frame = load_train_frame(tmp_path)  # the split is valid training data
    assert sorted(frame["concept_id"].unique()) == [1, 2, 4, 5, 6, 7, 8, 9]


def test_heldout_by_metadata_file_with_other_spelling(concept10_dir, source, tmp_path):
    _, meta = source
    spec = tmp_path / "eval_metadata.jsonl"
    lines = [{"concept_id": 100, "concept": "  " + meta[0]["concept"].upper() + " "},
             {"concept_id": 101, "concept": meta[3]["concept"].replace(" ", "  \t")},
             {"concept_id": 102, "concept": "a concept not in the training data"}]
    spec.write_text("".join(json.dumps(line) + "\n" for line in lines))
    make_split(concept10_dir, spec, "heldout", tmp_path / "out")
    _, _, record = read_split(tmp_path / "out")
    assert [r["concept_id"] for r in record["removed"]] == [0, 3]
    assert record["eval_matched"] == 2
    assert record["eval_not_found"] == ["a concept not in the training data"]
    assert not pd.read_parquet(tmp_path / "out" / "generate" / "train_data.parquet")[
        "concept_id"].isin([0, 3]).any()


def test_heldin_copies_everything(concept10_dir, tmp_path):
    summary = make_split(concept10_dir, "0,3", "heldin", tmp_path)
    gen, out = concept10_dir / "generate", tmp_path / "generate"
    assert (out / "train_data.parquet").read_bytes() == (gen / "train_data.parquet").read_bytes()
    assert load_metadata(out / "metadata.jsonl") == load_metadata(gen / "metadata.jsonl")
    record = json.loads((out / "split.json").read_text())
    assert record["mode"] == "heldin" and record["removed"] == []
    assert record["rows_before"] == record["rows_after"] == 936
    assert record["eval_matched"] == 2 and summary.training_concepts_after == 10


def test_concept500_heldout_removes_everything(concept10_dir, concept500_metadata, tmp_path):
    with pytest.raises(DataError, match="removes all 10 training concepts"):
        make_split(concept10_dir, concept500_metadata, "heldout", tmp_path)
    assert not (tmp_path / "generate").exists(), "nothing written on error"


def test_concept500_heldin_reports_coverage(concept10_dir, concept500_metadata, tmp_path):
    summary = make_split(concept10_dir, concept500_metadata, "heldin", tmp_path)
    assert (summary.eval_concepts, summary.eval_matched) == (500, 10)
    assert len(summary.eval_not_found) == 490


def test_stale_shards_removed(concept10_dir, tmp_path):
    (tmp_path / "generate").mkdir()
    stale = tmp_path / "generate" / "train_data_7.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(stale)
    make_split(concept10_dir, [0], "heldout", tmp_path)
    assert not stale.exists()


def test_cli(concept10_dir, source, tmp_path, capsys):
    assert main(["--data_dir", str(concept10_dir), "--eval_concepts", "0,3",
                 "--mode", "heldout", "--out_dir", str(tmp_path)]) == 0
    assert "8 training concepts remain" in capsys.readouterr().out
    check_heldout_0_3(tmp_path, source)
    assert main(["--data_dir", str(concept10_dir), "--eval_concepts", "0,99",
                 "--out_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "99" in err and err.count("\n") == 1


def test_out_dir_must_differ(concept10_dir, tmp_path):
    dump = tmp_path / "dump"  # a copy, so a broken check cannot overwrite the shared data
    shutil.copytree(concept10_dir / "generate", dump / "generate")
    before = (dump / "generate" / "train_data.parquet").read_bytes()
    with pytest.raises(DataError, match="must differ"):
        make_split(dump, [0], "heldout", dump)
    assert (dump / "generate" / "train_data.parquet").read_bytes() == before


def test_load_eval_concepts(source, tmp_path):
    _, meta = source
    assert load_eval_concepts([3, "0", "Extra  Concept", "extra concept"], meta) == [
        meta[3]["concept"], meta[0]["concept"], "Extra  Concept"]
    with pytest.raises(DataError, match="need a metadata file"):
        load_eval_concepts([1])
    with pytest.raises(DataError, match="id 42"):
        load_eval_concepts([42], meta)
    with pytest.raises(DataError, match="not found"):
        load_eval_concepts(str(tmp_path / "absent.jsonl"), meta)
    with pytest.raises(DataError, match="mode"):
        make_split(tmp_path, [0], "sideways", tmp_path / "out")
    assert normalise_concept(" A\tB ") == "a b"
