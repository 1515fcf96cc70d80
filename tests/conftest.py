"""Shared fixtures: a tiny random Gemma-2 and a locally trained tokenizer (never downloads)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import pytest
import torch

from axbench_data import CANDIDATES, data_dir, missing_files
from axbench_hypersteer.testing.tiny import build_tiny_gemma2, build_tiny_tokenizer

# Tiny models: one thread beats two (thread start-up dominates, and CI shares 2 cores).
torch.set_num_threads(1)

AXBENCH_DATA = data_dir()
CONCEPT10_2B = AXBENCH_DATA / "concept10" / "prod_2b_l20_v1"


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


def require_axbench_data() -> None:
    """Skip a test that needs AxBench's files when they are absent, with one line saying how to
    get them; with ``CI=true`` (as .ci/run sets it) fail instead, so CI cannot pass by skipping."""
    if not missing_files(AXBENCH_DATA):
        return
    message = (f"AxBench Concept10 data not found (looked in {', '.join(map(str, CANDIDATES))}): "
               "run `make data` to fetch it from AxBench's public repository")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (CI=true: these tests may not be skipped)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def concept10_dir():
    """AxBench's Concept10 for Gemma-2-2B layer 20; ``concept10_dir.parents[1] / "concept500"``
    holds the Concept500 concept list."""
    require_axbench_data()
    return CONCEPT10_2B
