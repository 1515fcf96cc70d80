"""Data loading and batching, on the real Concept10 dump and on small broken dumps in tmp_path."""

import json
import types

import numpy as np
import pandas as pd
import pytest
import torch

from axbench_hypersteer.model.collate import SteeringCollator
from axbench_hypersteer.model.tokens import format_prompt
from axbench_hypersteer.model.errors import DataError
from axbench_hypersteer.train.dataset import TrainDataset
from axbench_hypersteer.stages.data import (load_metadata, load_train_frame,
                                              normalise_concept, shuffle_examples)

CONCEPTS = {0: "alpha things", 1: "beta things"}


def write_dump(root, rows=None, metadata=None, name="train_data.parquet"):
    """A tiny AxBench dump: ``root/generate/{train_data.parquet, metadata.jsonl}``."""
    gen = root / "generate"
    gen.mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = [dict(input=f"question {i}", output=f"answer {i}", output_concept=CONCEPTS[c],
                     category="positive", concept_id=c) for i, c in enumerate([0, 1, 0, 1])]
        rows.append(dict(input="neg", output="neg answer", output_concept="EEEEE",
                         category="negative", concept_id=-1))
    pd.DataFrame(rows).to_parquet(gen / name)
    if metadata is None:
        metadata = [dict(concept_id=c, concept=t, ref="r", concept_genres_map={t: ["text"]})
                    for c, t in CONCEPTS.items()]
    (gen / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metadata))
    return root


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, "errors are one line"
    return msg


# ------------------------------------------------------------------ real Concept10 data


@pytest.fixture(scope="module")
def frame(concept10_dir):
    return load_train_frame(concept10_dir)


def test_positives_only_with_metadata_concept(frame, concept10_dir):
    assert list(frame.columns) == ["concept_id", "concept", "input", "output"]
    assert len(frame) == 720
    assert frame["concept_id"].value_counts().to_dict() == {c: 72 for c in range(10)}
    meta = {m["concept_id"]: m["concept"]
            for m in load_metadata(concept10_dir / "generate" / "metadata.jsonl")}
    assert (frame["concept"] == frame["concept_id"].map(meta)).all()
    assert "EEEEE" not in set(frame["concept"])


def test_generate_dir_accepted(concept10_dir, frame):
    same = load_train_frame(concept10_dir / "generate")
    pd.testing.assert_frame_equal(same, frame)


def test_max_concepts_keeps_lowest_ids(concept10_dir):
    sub = load_train_frame(concept10_dir, max_concepts=3)
    assert set(sub["concept_id"]) == {0, 1, 2} and len(sub) == 216


def test_max_num_of_examples_keeps_first_rows(concept10_dir):
    sub = load_train_frame(concept10_dir, max_num_of_examples=5, seed=None)
    assert sub["concept_id"].value_counts().to_dict() == {c: 5 for c in range(10)}
    raw = pd.read_parquet(concept10_dir / "generate" / "train_data.parquet")
    first = raw[raw["category"] == "positive"].groupby("concept_id").head(5)
    assert sorted(sub["input"]) == sorted(first["input"])


def test_concept_ids_filter(concept10_dir):
    sub = load_train_frame(concept10_dir, concept_ids=[7, 2])
    assert set(sub["concept_id"]) == {2, 7}
    assert "[42]" in error_of(load_train_frame, concept10_dir, concept_ids=[2, 42])


def test_shuffle_mixes_concepts_and_is_seeded(frame, concept10_dir):
    ordered = load_train_frame(concept10_dir, seed=None)
    assert ordered["concept_id"].head(72).nunique() == 1  # file order groups concepts
    assert frame["concept_id"].head(72).nunique() == 10  # the default seed mixes them
    a, b = shuffle_examples(ordered, 1), shuffle_examples(ordered, 1)
    pd.testing.assert_frame_equal(a, b)
    assert not shuffle_examples(ordered, 2)["input"].equals(a["input"])
    assert sorted(a["input"]) == sorted(ordered["input"])
    pd.testing.assert_frame_equal(load_train_frame(concept10_dir), frame)


def test_dataset_rows(frame):
    ds = TrainDataset(frame)
    assert len(ds) == 720
    assert set(ds[0]) == {"concept_id", "concept", "input", "output"}
    assert isinstance(ds[0]["concept_id"], int)


# ------------------------------------------------------------------ prompts and batches


def test_format_prompt(tokenizer):
    text = format_prompt(tokenizer, "Hi there")
    assert text == "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    plain = types.SimpleNamespace(chat_template=None, bos_token="<bos>")
    assert format_prompt(plain, "Hi there") == "Hi there"


@pytest.fixture(scope="module")
def rows(frame):
    ds = TrainDataset(frame)
    return [ds[i] for i in range(6)]


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_labels_cover_exactly_the_answer(tokenizer, rows):
    batch = SteeringCollator(tokenizer, max_length=4096)(rows)
    for i, row in enumerate(rows):
        ids, labels = batch["input_ids"][i], batch["labels"][i]
        scored = labels != -100
        assert torch.equal(labels[scored], ids[scored])
        assert decode(tokenizer, labels[scored].tolist()) == row["output"]
        n_prompt = int(batch["context_mask"][i].sum())
        assert not scored[:n_prompt].any() and scored[n_prompt:].sum() == scored.sum()
        assert decode(tokenizer, ids[:n_prompt].tolist()) == tokenizer.apply_chat_template(
            [{"role": "user", "content": row["input"]}], tokenize=False,
            add_generation_prompt=True)


def test_right_padding_and_context_mask(tokenizer, rows):
    batch = SteeringCollator(tokenizer, max_length=4096)(rows)
    mask = batch["attention_mask"]
    lengths = mask.sum(1)
    assert lengths.min() < mask.shape[1], "rows of different length, so padding exists"
    for i, n in enumerate(lengths.tolist()):
        assert mask[i, :n].all() and not mask[i, n:].any()
        assert (batch["input_ids"][i, n:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][i, n:] == -100).all()
    assert (batch["input_ids"][:, 0] == tokenizer.bos_token_id).all()
    assert batch["context_mask"].dtype == torch.bool
    assert torch.equal(batch["context_mask"], mask.bool() & (batch["labels"] == -100))
    assert torch.equal(batch["concept_ids"], torch.tensor([r["concept_id"] for r in rows]))


def test_hypernet_input_left_padded_with_bos(tokenizer, rows):
    batch = SteeringCollator(tokenizer)(rows)
    ids, mask = batch["hyper_input_ids"], batch["hyper_attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == len(rows)
    lengths = mask.sum(1)
    assert lengths.min() < ids.shape[1], "concepts of different length, so padding exists"
    for i, n in enumerate(lengths.tolist()):
        width = ids.shape[1]
        assert not mask[i, : width - n].any() and mask[i, width - n:].all()
        assert (ids[i, : width - n] == tokenizer.pad_token_id).all()
        assert ids[i, width - n] == tokenizer.bos_token_id
        assert decode(tokenizer, ids[i, width - n + 1:].tolist()) == rows[i]["concept"]


def test_in_context_hypernet_text(tokenizer, rows):
    join = lambda concept, instruction: f"{concept} || {instruction}"  # noqa: E731
    batch = SteeringCollator(tokenizer, hypernet_text=join)(rows[:2])
    ids, mask = batch["hyper_input_ids"][0], batch["hyper_attention_mask"][0].bool()
    assert decode(tokenizer, ids[mask][1:].tolist()) == join(rows[0]["concept"], rows[0]["input"])
    solo_ids, _ = SteeringCollator(tokenizer).encode_hypernet([rows[0]["concept"]])
    assert solo_ids[0, 0] == tokenizer.bos_token_id


def test_truncation_keeps_prompt_and_cuts_answer(tokenizer, rows):
    full = SteeringCollator(tokenizer, max_length=4096)(rows)
    batch = SteeringCollator(tokenizer, max_length=100)(rows)
    assert batch["input_ids"].shape[1] == 100 < full["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"], full["input_ids"][:, :100])
    assert torch.equal(batch["labels"], full["labels"][:, :100])
    assert torch.equal(batch["context_mask"], full["context_mask"][:, :100])
    assert "max_length 10" in error_of(SteeringCollator(tokenizer, max_length=10), rows[:1])


# ------------------------------------------------------------------ bad data


def test_small_dump_loads(tmp_path):
    out = load_train_frame(write_dump(tmp_path), seed=None)
    assert out["input"].tolist() == [f"question {i}" for i in range(4)]
    assert out["concept"].tolist() == ["alpha things", "beta things"] * 2


def test_shards_are_read(tmp_path):
    write_dump(tmp_path)
    shard = [dict(input="q", output="a", output_concept="Beta  Things", category="positive",
                  concept_id=1)]
    pd.DataFrame(shard).to_parquet(tmp_path / "generate" / "train_data_1.parquet")
    assert len(load_train_frame(tmp_path)) == 5


def test_missing_column(tmp_path):
    rows = [dict(input="q", output="a", category="positive", concept_id=0)]
    msg = error_of(load_train_frame, write_dump(tmp_path, rows))
    assert "train_data.parquet" in msg and "output_concept" in msg


def test_concept_id_absent_from_metadata(tmp_path):
    rows = [dict(input="q", output="a", output_concept="gamma", category="positive",
                 concept_id=7)]
    msg = error_of(load_train_frame, write_dump(tmp_path, rows))
    assert "concept_id 7" in msg and "metadata.jsonl" in msg


def test_empty_after_dropping_negatives(tmp_path):
    rows = [dict(input="q", output="a", output_concept="EEEEE", category="negative",
                 concept_id=-1)]
    assert "negatives" in error_of(load_train_frame, write_dump(tmp_path, rows))


def test_nan_output_names_file_column_and_row(tmp_path):
    rows = [dict(input="q", output="a", output_concept="alpha things", category="positive",
                 concept_id=0),
            dict(input="q", output=np.nan, output_concept="alpha things",
                 category="positive", concept_id=0)]
    msg = error_of(load_train_frame, write_dump(tmp_path, rows))
    assert "train_data.parquet" in msg and "'output'" in msg and "row 1" in msg


def test_output_concept_must_match_metadata(tmp_path):
    rows = [dict(input="q", output="a", output_concept="something else", category="positive",
                 concept_id=0)]
    assert "does not match" in error_of(load_train_frame, write_dump(tmp_path, rows))


def test_filter_values_checked(tmp_path):
    assert "max_concepts" in error_of(load_train_frame, write_dump(tmp_path), max_concepts=0)


def test_metadata_errors(tmp_path):
    path = tmp_path / "metadata.jsonl"
    good = dict(concept_id=0, concept="a", ref="r", concept_genres_map={"a": ["text"]})
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    assert "duplicate concept_id 0" in error_of(load_metadata, path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    assert "metadata.jsonl:2" in error_of(load_metadata, path)
    path.write_text(json.dumps({"concept_id": 0, "concept": "a"}) + "\n")
    assert "ref" in error_of(load_metadata, path)
    path.write_text("\n")
    assert "empty" in error_of(load_metadata, path)
    assert "not found" in error_of(load_metadata, tmp_path / "absent.jsonl")
    assert "not found" in error_of(load_train_frame, tmp_path / "absent_dir")


def test_normalise_concept():
    assert normalise_concept("  Alpha \n\t THINGS ") == "alpha things"
