"""Shared fixtures: a tiny random Gemma-2 and a locally trained tokenizer (never downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
import torch

from axbench_hypersteer.testing.tiny import build_tiny_gemma2, build_tiny_tokenizer

# Tiny models: one thread beats two (thread start-up dominates, and CI shares 2 cores).
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "axbench-data"
CONCEPT10_2B = SHARED_DATA / "concept10" / "prod_2b_l20_v1"


@pytest.fixture(autouse=True)
def one_torch_thread_per_test():
    """Keep every test on one intra-op thread even if code under test changed the setting."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer):
    """4 layers, hidden 64, fp32, eager attention; rebuilt per test so tests cannot leak state."""
    return build_tiny_gemma2(tokenizer, hidden_size=64, num_layers=4, seed=0)


@pytest.fixture(scope="session")
def concept10_dir():
    if not CONCEPT10_2B.exists():
        pytest.skip(f"AxBench Concept10 data not found at {CONCEPT10_2B} (../shared absent)")
    return CONCEPT10_2B
