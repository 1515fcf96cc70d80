"""On-disk cache of judge answers, so that a re-run never pays for the same judgement twice.

The file is JSON Lines, append-only, one ``{"key", "model", "completion"}`` object per answer, each
line flushed and fsynced as it is written: a kill can lose at most the line being written. On
load, a torn last line (no newline, or not valid JSON) is cut off so the next append starts clean.
Only the model name and the completion are stored: never request headers, so never the API key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def cache_key(model: str, prompt: str) -> str:
    """sha256 of the (model, prompt) pair; JSON-encoding the pair keeps the boundary unambiguous."""
    payload = json.dumps([model, prompt], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class JudgeCache:
    """Append-only JSONL cache keyed by :func:`cache_key`; later lines win over earlier ones."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries: dict[str, str] = {}
        self.skipped_lines = 0
        self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def _read_entry(self, line: bytes) -> bool:
        try:
            entry = json.loads(line)
            self._entries[str(entry["key"])] = str(entry["completion"])
            return True
        except (ValueError, KeyError, TypeError):
            return False

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        *complete, tail = raw.split(b"\n")  # ``tail`` is empty unless the last line is torn
        for number, line in enumerate(complete, start=1):
            if line.strip() and not self._read_entry(line):
                self.skipped_lines += 1
                logger.warning("%s:%d: skipping a corrupt judge-cache line", self.path, number)
        if not tail.strip():
            return
        with self.path.open("r+b") as handle:
            if self._read_entry(tail):  # whole but unterminated: terminate it
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
            else:
                logger.warning("%s: dropping a truncated last line of the judge cache", self.path)
                handle.truncate(len(raw) - len(tail))
            handle.flush()
            os.fsync(handle.fileno())

    def get(self, model: str, prompt: str) -> str | None:
        return self._entries.get(cache_key(model, prompt))

    def put(self, model: str, prompt: str, completion: str) -> None:
        """Record one answer durably before returning (flush + fsync of the appended line)."""
        key = cache_key(model, prompt)
        entry = {"key": key, "model": model, "completion": completion}
        line = json.dumps(entry, ensure_ascii=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as handle:
            handle.write(line.encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._entries[key] = completion
