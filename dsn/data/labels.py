"""Sleep-stage label definitions and the R&K -> AASM mapping.

Pure functions, no I/O: everything here is testable on plain lists and arrays.
"""

from __future__ import annotations

import numpy as np

#: AASM stages in class-index order (the order of every per-class metric).
STAGES: tuple[str, ...] = ("W", "N1", "N2", "N3", "REM")
N_CLASSES = len(STAGES)

#: Label value of epochs that are kept in the sequence but ignored by losses and metrics
#: (``Sleep stage ?`` / ``Movement time`` when ``unscored="mask"``).
IGNORE_INDEX = -1

#: Sleep-EDF (R&K) annotation descriptions -> AASM class index, or ``IGNORE_INDEX`` for unscored epochs.
RK_TO_AASM: dict[str, int] = {
    "Sleep stage W": 0,
    "Sleep stage 1": 1,
    "Sleep stage 2": 2,
    "Sleep stage 3": 3,
    "Sleep stage 4": 3,
    "Sleep stage R": 4,
    "Sleep stage ?": IGNORE_INDEX,
    "Movement time": IGNORE_INDEX,
}

#: R&K descriptions in the order a generator or a test may want them.
RK_LABELS: tuple[str, ...] = tuple(RK_TO_AASM)


def stage_names(y: np.ndarray) -> list[str]:
    """Map class indices to stage names (``IGNORE_INDEX`` -> ``"?"``)."""
    return [STAGES[int(v)] if v >= 0 else "?" for v in np.asarray(y)]


def class_counts(y: np.ndarray) -> dict[str, int]:
    """Count epochs per AASM stage (ignored epochs are not counted)."""
    y = np.asarray(y)
    return {name: int((y == i).sum()) for i, name in enumerate(STAGES)}
