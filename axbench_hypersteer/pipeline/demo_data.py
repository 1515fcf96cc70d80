"""The demo's built-in concept dataset, written for this project, in AxBench's file format.

Six concepts, each with answers that weave the concept's vocabulary into replies to everyday
instructions, plus a small negative pool, written as ``generate/train_data.parquet`` and
``generate/metadata.jsonl`` so every stage reads it exactly as it reads AxBench's data. The
vocabulary is deliberately distinctive so the demo's rule-based stand-in judge can see it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from ..core.fileio import atomic_write, atomic_write_text

CONCEPTS = {
    "references to the ocean and sea life": (
        "text", ["ocean", "sea", "life", "coral", "dolphin", "reef", "whale", "waves"]),
    "mentions of cooking and kitchen tools": (
        "text", ["cooking", "oven", "whisk", "recipe", "simmer", "knife", "kitchen", "tools"]),
    "references to outer space and astronomy": (
        "text", ["space", "astronomy", "galaxy", "telescope", "planet", "comet", "moon", "rocket"]),
    "mentions of music and musical instruments": (
        "text", ["music", "instruments", "piano", "rhythm", "guitar", "song", "violin", "melody"]),
    "references to gardening and plants": (
        "text", ["gardening", "plants", "soil", "flower", "leaf", "bloom", "roots", "seeds"]),
    "mentions of trains and railway travel": (
        "text", ["trains", "railway", "travel", "ticket", "platform", "station", "track", "journey"]),
}

INSTRUCTIONS = [
    "Tell me about your day.", "What is a good way to relax?", "Describe a nice place.",
    "Give me some advice for the weekend.", "Write a short message to a friend.",
    "What makes you happy?", "Describe something you saw recently.", "Suggest a hobby.",
    "What is your favourite season and why?", "Write a short story opening.",
    "How do you plan a good day?", "Describe a memorable moment.",
]

# Answers are dense in concept words: a tiny random LM can only learn a concept-dependent shift
# of its next-token distribution, and function words would otherwise dominate the loss.
TEMPLATES = [
    "{a} {b} {c} {d} {a} {c}",
    "{a} {b} {c} {d} {b} {d}",
    "{b} {a} {d} {c} {a} {b}",
    "{c} {d} {a} {b} {c} {a}",
]

NEUTRAL = ["I think it is good to rest and take things slowly.",
           "A calm day with friends is a fine plan.",
           "It helps to write a list and keep it simple."]


def build_frames(seed: int = 0, per_concept: int = 24) -> tuple[pd.DataFrame, list[dict]]:
    rng = random.Random(seed)
    rows, metadata = [], []
    for cid, (concept, (genre, words)) in enumerate(CONCEPTS.items()):
        # AxBench's inference parses an integer SAE id after the last "/" of `ref`.
        metadata.append({"concept_id": cid, "concept": concept, "ref": f"hypersteer-demo/{cid}",
                         "concept_genres_map": {concept: [genre]}})
        for i in range(per_concept):
            a, b, c, d = rng.sample(words, 4)
            rows.append({"input": INSTRUCTIONS[i % len(INSTRUCTIONS)],
                         "output": rng.choice(TEMPLATES).format(a=a, b=b, c=c, d=d),
                         "output_concept": concept, "concept_genre": genre,
                         "category": "positive", "dataset_category": "instruction",
                         "concept_id": cid})
    for i, instruction in enumerate(INSTRUCTIONS):
        rows.append({"input": instruction, "output": NEUTRAL[i % len(NEUTRAL)],
                     "output_concept": "EEEEE", "concept_genre": "text", "category": "negative",
                     "dataset_category": "instruction", "concept_id": -1})
    return pd.DataFrame(rows), metadata


def write_demo_dataset(out_dir: str | Path, seed: int = 0) -> Path:
    """Write ``out_dir/generate/{train_data.parquet, metadata.jsonl}``; returns the generate dir."""
    gen = Path(out_dir) / "generate"
    frame, metadata = build_frames(seed)
    atomic_write(gen / "train_data.parquet", lambda p: frame.to_parquet(p, index=False))
    atomic_write_text(gen / "metadata.jsonl", "".join(json.dumps(m) + "\n" for m in metadata))
    return gen
