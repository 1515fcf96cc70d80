"""Rule-based scores for the offline stand-in judge (the demo's judge when there is no LLM).

These are crude text statistics, not a judgement of meaning; they exist so that the whole pipeline
(inference -> evaluate -> factor selection) can run end to end on a laptop without network access,
and so that the numbers move in the right direction (a generation that mentions the concept scores
higher on ``concept``, a repetitive one lower on ``fluency``). Never report them as LLM-judge
scores.
"""

from __future__ import annotations

import re

_WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_TOKEN_RE = re.compile(r"\S+")
_STOPWORDS = frozenset(
    """a an and are as at be but by can could did do does for from had has have how i if in into
    is it its of on or our should so than that the their them then there these they this those to
    was we were what when where which who why will with would you your about any some such also
    other more most not no yes all each very just been being over under using use used""".split()
)


def content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ letters that are not stop words, reduced to a 5-letter stem so that
    'rental' and 'rentals' meet."""
    words = (w.lower() for w in _WORD_RE.findall(text or ""))
    return {w[:5] for w in words if len(w) >= 3 and w not in _STOPWORDS}


def _overlap_score(reference: str, sentence: str, full: float) -> int:
    wanted = content_words(reference)
    if not wanted:
        return 0
    share = len(wanted & content_words(sentence)) / len(wanted)
    if share >= full:
        return 2
    return 1 if share > 0 else 0


def concept_score(concept: str, sentence: str) -> int:
    """2 if at least half of the concept's content words appear, 1 if any do, else 0."""
    return _overlap_score(concept, sentence, full=0.5)


def instruction_score(instruction: str, sentence: str) -> int:
    """2 if at least 30% of the instruction's content words are echoed, 1 if any are, else 0."""
    return _overlap_score(instruction, sentence, full=0.3)


def fluency_score(sentence: str) -> int:
    """From the share of tokens that are ordinary words and the share of distinct tokens: gibberish
    and loops (the usual failure of an over-steered model) score low."""
    tokens = _TOKEN_RE.findall(sentence or "")
    if len(tokens) < 3:
        return 0
    wordlike = sum(1 for t in tokens if _WORD_RE.fullmatch(t.strip(".,;:!?\"()'")))
    alpha_share = wordlike / len(tokens)
    distinct_share = len({t.lower() for t in tokens}) / len(tokens)
    if alpha_share >= 0.8 and distinct_share >= 0.5:
        return 2
    if alpha_share >= 0.5 and distinct_share >= 0.3:
        return 1
    return 0


def score(criterion: str, fields: dict[str, str]) -> tuple[int, str]:
    """(score, one-line reason) for a criterion, given the fields pulled out of the prompt."""
    sentence = fields.get("sentence", "")
    if criterion == "concept":
        value = concept_score(fields.get("concept", ""), sentence)
        return value, "share of the concept's content words found in the response"
    if criterion == "instruction":
        value = instruction_score(fields.get("instruction", ""), sentence)
        return value, "word overlap between the instruction and the response"
    if criterion == "fluency":
        return fluency_score(sentence), "share of ordinary words and of non-repeated tokens"
    raise ValueError(f"offline judge: unknown criterion {criterion!r}")
