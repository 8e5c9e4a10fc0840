"""Subject-wise splits: no subject ever appears in two of train / validation / test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dsn.data.errors import DataError


@dataclass(frozen=True)
class Split:
    """Subject ids of each split (sorted)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def __post_init__(self) -> None:
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            common = set(getattr(self, a)) & set(getattr(self, b))
            if common:
                raise DataError(f"subjects {sorted(common)} are in both {a} and {b}: splits must be subject-wise.")

    def as_dict(self) -> dict[str, list[str]]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}


def subject_kfold(
    subjects: Sequence[str], n_folds: int, fold: int, n_val_subjects: int = 1, seed: int = 0
) -> Split:
    """Fold ``fold`` of a k-fold cross-validation over subjects.

    Subjects are shuffled with ``seed`` and cut into ``n_folds`` near-equal groups; group ``fold`` is the
    test set. ``n_val_subjects`` validation subjects are drawn (with the same seed) from the remaining
    subjects; the rest train. ``n_folds = len(subjects)`` is leave-one-subject-out (the paper's 20-fold
    cross-validation on Sleep-EDF-20).

    Raises
    ------
    DataError
        If ``fold`` is out of range or too few subjects remain for training.
    """
    subs = sorted(set(subjects))
    if not 2 <= n_folds <= len(subs):
        raise DataError(f"n_folds={n_folds}: need 2 <= n_folds <= number of subjects ({len(subs)}).")
    if not 0 <= fold < n_folds:
        raise DataError(f"fold={fold}: must be in 0..{n_folds - 1}.")
    rng = np.random.default_rng(seed)
    order = [subs[i] for i in rng.permutation(len(subs))]
    groups = np.array_split(np.arange(len(subs)), n_folds)
    test = [order[i] for i in groups[fold]]
    rest = [s for s in order if s not in test]
    if len(rest) <= n_val_subjects:
        raise DataError(
            f"{len(subs)} subjects, {len(test)} for test: {len(rest)} left, not enough for "
            f"{n_val_subjects} validation subject(s) and at least one training subject. Use fewer folds or "
            "fewer validation subjects."
        )
    val_idx = np.random.default_rng([seed, fold]).choice(len(rest), size=n_val_subjects, replace=False)
    val = [rest[i] for i in sorted(val_idx)]
    train = [s for s in rest if s not in val]
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))


def fixed_split(train: Sequence[str], val: Sequence[str], test: Sequence[str], available: Sequence[str]) -> Split:
    """A split given explicitly by subject ids (checked against the subjects found)."""
    missing = sorted((set(train) | set(val) | set(test)) - set(available))
    if missing:
        raise DataError(f"subjects {missing} not found in the data. Available: {sorted(set(available))}.")
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)))
