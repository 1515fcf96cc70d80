"""The demo's data, built from :mod:`demo_concepts`: the hypernetwork's training set in AxBench's
file format, the held-out concepts' metadata, and the base LM's instruction -> answer corpus.

The positives mix the concept into an answer to the instruction (a concept sentence, the plain
answer's first sentence, another concept sentence), like AxBench's positives, which answer the
instruction while bringing in the concept. Only training concepts and training instructions go
into ``train_data.parquet``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from .concepts import (ANSWERS, CONCEPT_SENTENCES, CONCEPTS, HELD_OUT_CONCEPTS,
                            TOPIC_REQUESTS, TRAINING_CONCEPTS, TRAINING_INSTRUCTIONS,
                            composed_concepts)
from ..model.fileio import atomic_write, atomic_write_text

HELD_OUT_METADATA = "heldout_metadata.jsonl"
# 32 hand-written + 480 composed training concepts: Concept500's size. Each composed concept
# gets a few positives only; what it teaches is the shared description -> vector map.
N_COMPOSED = 480
PER_CONCEPT, PER_COMPOSED = 24, 4
COMPOSED = composed_concepts(N_COMPOSED)
VOCABULARY = {**CONCEPTS, **COMPOSED}  # description -> the nouns its positives use
ALL_TRAINING_CONCEPTS = TRAINING_CONCEPTS + list(COMPOSED)
# Training concepts first, so their ids run 0..511 as in a training file of their own.
CONCEPT_IDS = {c: cid for cid, c in enumerate(ALL_TRAINING_CONCEPTS + HELD_OUT_CONCEPTS)}


def concept_sentence(concept: str, rng: random.Random) -> str:
    words = VOCABULARY[concept]
    a, b, c = rng.sample(words, 3) if len(words) >= 3 else [rng.choice(words) for _ in range(3)]
    return rng.choice(CONCEPT_SENTENCES).format(a=a, b=b, c=c)


def first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + "." if dot else text


def metadata(concepts: list[str]) -> list[dict]:
    # AxBench's inference parses an integer SAE id after the last "/" of `ref`.
    return [{"concept_id": CONCEPT_IDS[c], "concept": c, "ref": f"hypersteer-demo/{CONCEPT_IDS[c]}",
             "concept_genres_map": {c: ["text"]}} for c in concepts]


def build_frames(seed: int = 0) -> tuple[pd.DataFrame, list[dict]]:
    """Training positives of every training concept, hand-written and composed (plus AxBench's
    negatives), and their metadata."""
    rng = random.Random(seed)
    rows = []
    for concept in ALL_TRAINING_CONCEPTS:
        for i in range(PER_CONCEPT if concept in CONCEPTS else PER_COMPOSED):
            instruction = TRAINING_INSTRUCTIONS[i % len(TRAINING_INSTRUCTIONS)]
            rows.append({"input": instruction, "output": mixed_answer(instruction, concept, rng),
                         "output_concept": concept,
                         "concept_genre": "text", "category": "positive",
                         "dataset_category": "instruction", "concept_id": CONCEPT_IDS[concept]})
    for instruction in TRAINING_INSTRUCTIONS:  # negatives are dropped by training, kept for AxBench
        rows.append({"input": instruction, "output": ANSWERS[instruction][0],
                     "output_concept": "EEEEE", "concept_genre": "text", "category": "negative",
                     "dataset_category": "instruction", "concept_id": -1})
    return pd.DataFrame(rows), metadata(ALL_TRAINING_CONCEPTS)


def write_demo_dataset(out_dir: str | Path, seed: int = 0) -> Path:
    """Write ``out_dir/generate/{train_data.parquet, metadata.jsonl}`` (training concepts) and
    ``out_dir/generate/heldout_metadata.jsonl`` (held-out concepts); returns the generate dir."""
    gen = Path(out_dir) / "generate"
    frame, meta = build_frames(seed)
    atomic_write(gen / "train_data.parquet", lambda p: frame.to_parquet(p, index=False))
    atomic_write_text(gen / "metadata.jsonl", "".join(json.dumps(m) + "\n" for m in meta))
    atomic_write_text(gen / HELD_OUT_METADATA,
                      "".join(json.dumps(m) + "\n" for m in metadata(HELD_OUT_CONCEPTS)))
    return gen


def mixed_answer(instruction: str, concept: str, rng: random.Random) -> str:
    """An answer to ``instruction`` that brings in ``concept``: AxBench's positive shape."""
    answer = first_sentence(rng.choice(ANSWERS[instruction]))
    return " ".join([concept_sentence(concept, rng), answer, concept_sentence(concept, rng)])


def lm_corpus(n_examples: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(instruction, answer)`` pairs for the base LM, over every instruction (training and
    evaluation ones) and every concept (held-out ones included: the base LM knows the world):
    two in five plain answers, one in five a request about a topic answered with three sentences
    about it, two in five an instruction with "Include {concept}." answered with the concept
    mixed in. The last kind is what a real LM can do when prompted, and what steering must
    achieve without the prompt: it gives the model a "talking about X" state inside ordinary
    answers that a steering vector can reach."""
    rng = random.Random(seed)
    instructions, concepts = list(ANSWERS), list(CONCEPTS)
    pairs = []
    for i in range(n_examples):
        kind, instruction, concept = i % 5, rng.choice(instructions), rng.choice(concepts)
        if kind in (0, 1):
            pairs.append((instruction, rng.choice(ANSWERS[instruction])))
        elif kind == 2:
            request = rng.choice(TOPIC_REQUESTS).format(concept=concept)
            pairs.append((request, " ".join(concept_sentence(concept, rng) for _ in range(3))))
        else:
            pairs.append((f"{instruction} Include {concept}.", mixed_answer(instruction, concept, rng)))
    return pairs


def tokenizer_texts() -> list[str]:
    """Text for the tokenizer, so that every concept word and answer word is a whole token."""
    words = [w for ws in CONCEPTS.values() for w in ws]
    return [*CONCEPTS, *ANSWERS, *(a for answers in ANSWERS.values() for a in answers),
            " ".join(words), *CONCEPT_SENTENCES]
