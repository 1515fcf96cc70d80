"""Training rows as a torch ``Dataset``: what the trainer iterates over.

The trainer takes a frame of ``concept_id, concept, input, output`` rows however they were made
(AxBench files are read by :mod:`axbench_hypersteer.stages.data`); converting once to plain dicts
keeps pandas out of the per-step path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch.utils.data import Dataset

if TYPE_CHECKING:  # only the type: the core install (torch + transformers) has no pandas
    import pandas as pd

from ..model.errors import DataError

FRAME_COLUMNS = ("concept_id", "concept", "input", "output")


class TrainDataset(Dataset):
    """Rows of :func:`load_train_frame` as dicts, ready for :class:`SteeringCollator`."""

    def __init__(self, frame: "pd.DataFrame"):
        missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"training frame: missing column(s) {missing}")
        self.rows = [
            {"concept_id": int(r.concept_id), "concept": r.concept, "input": r.input,
             "output": r.output}
            for r in frame[list(FRAME_COLUMNS)].itertuples(index=False)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]
