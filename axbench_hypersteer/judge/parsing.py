"""Turning a judge's free-text answer into a 0-2 score, and three scores into one.

Judges rarely follow the requested ``Rating: [[score]]`` format to the letter (markdown bold,
"2/2", a trailing full stop, a remark after the number), so the parser is lenient about decoration
but strict about meaning: anything it cannot read as a number on the 0-2 scale is ``None`` (a
failed judgement the caller may retry), never a silent 0 as in AxBench, so failures stay countable.
"""

from __future__ import annotations

import math
import re

MIN_RATING = 0.0
MAX_RATING = 2.0

_LABEL_RE = re.compile(r"rating\s*:", re.IGNORECASE)
# Decoration around the number: brackets, markdown emphasis, quotes, code ticks.
_DECORATION = "[]*\"'`_ \t"
# A number, optionally "out of" the scale ("2/2", "1 out of 2"); the next character must not
# continue a word or number, so "20" or "2x" are not read as 2.
_NUMBER_RE = re.compile(
    r"^([+-]?\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?(?![\w.]\d)(?!\w)",
    re.IGNORECASE,
)


def parse_rating(completion: str | None) -> float | None:
    """Score after the *last* ``Rating:`` label (as AxBench does), or None if there is none, it is
    not a number, or it lies outside [0, 2].

    A fraction is only accepted over the 0-2 scale ("2/2"); "4/5" is ambiguous and returns None.
    The number may sit on the line after the label ("Rating:\\n[[2]]").
    """
    if not completion:
        return None
    labels = list(_LABEL_RE.finditer(completion))
    if not labels:
        return None
    tail = completion[labels[-1].end():]
    line = next((ln for ln in tail.splitlines() if ln.strip(_DECORATION)), "")
    text = line.strip(_DECORATION)
    match = _NUMBER_RE.match(text)
    if match is None:
        return None
    value = float(match.group(1))
    if match.group(2) is not None and float(match.group(2)) != MAX_RATING:
        return None
    if not math.isfinite(value) or not MIN_RATING <= value <= MAX_RATING:
        return None
    return value


def harmonic_mean(
    concept: float | None, instruction: float | None, fluency: float | None
) -> float:
    """AxBench's per-row aggregate: the harmonic mean of the three scores, and 0 if any score is 0.

    A failed judgement (None) counts as 0, so a flaky judge can only lower a method's score, never
    raise it.
    """
    scores = (concept, instruction, fluency)
    if any(s is None or not math.isfinite(s) or s <= 0 for s in scores):
        return 0.0
    return len(scores) / sum(1.0 / s for s in scores)  # type: ignore[operator]
