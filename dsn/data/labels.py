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


def runs(values: np.ndarray | list) -> list[tuple[int, int, int]]:
    """Run-length encoding of a 1-D sequence (a hypnogram, a mask): ``(value, first index, length)`` of every
    run of equal values, in order (``[]`` for an empty sequence)."""
    v = np.asarray(values)
    if v.size == 0:
        return []
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    lengths = np.diff(np.r_[starts, v.size])
    return [(int(v[s]), int(s), int(n)) for s, n in zip(starts, lengths, strict=True)]


def true_runs(mask: np.ndarray | list) -> list[tuple[int, int]]:
    """``[start, stop)`` index pairs of the runs of True in a 1-D boolean mask (:func:`runs`)."""
    return [(s, s + n) for v, s, n in runs(np.asarray(mask, dtype=bool)) if v]


# --------------------------------------------------------------------------------------------
# Label maps of other data sets (a data-set profile names one or more, see dsn.data.datasets)
# --------------------------------------------------------------------------------------------
#: Value of a label-map entry for unscored / movement / artefact epochs (they follow ``data.unscored``).
UNSCORED = "unscored"

#: Stage names a label map may map to (besides :data:`UNSCORED`).
_TARGETS = {name: i for i, name in enumerate(STAGES)} | {"R": 4, UNSCORED: IGNORE_INDEX}

#: Built-in label maps: name -> {label: stage name or "unscored"}. Spellings are matched after
#: :func:`normalize_label` (case, surrounding and repeated white space ignored).
LABEL_MAPS: dict[str, dict[str, str]] = {
    # Sleep-EDF's R&K descriptions (S3 and S4 -> N3).
    "rk": {
        "Sleep stage W": "W", "Sleep stage 1": "N1", "Sleep stage 2": "N2", "Sleep stage 3": "N3",
        "Sleep stage 4": "N3", "Sleep stage R": "REM", "Sleep stage ?": UNSCORED, "Movement time": UNSCORED,
    },
    # AASM and R&K spellings in words (no bare numbers: their meaning depends on the scoring software).
    "aasm": {
        "W": "W", "Wake": "W", "Awake": "W", "Stage W": "W", "Sleep stage W": "W",
        "N1": "N1", "NREM1": "N1", "NREM 1": "N1", "S1": "N1", "Stage 1": "N1", "Stage N1": "N1", "Sleep stage 1": "N1",
        "Sleep stage N1": "N1",
        "N2": "N2", "NREM2": "N2", "NREM 2": "N2", "S2": "N2", "Stage 2": "N2", "Stage N2": "N2", "Sleep stage 2": "N2",
        "Sleep stage N2": "N2",
        "N3": "N3", "NREM3": "N3", "NREM 3": "N3", "S3": "N3", "S4": "N3", "Stage 3": "N3", "Stage 4": "N3",
        "Stage N3": "N3", "Sleep stage 3": "N3", "Sleep stage 4": "N3", "Sleep stage N3": "N3", "SWS": "N3",
        "R": "REM", "REM": "REM", "Stage R": "REM", "Stage REM": "REM", "Sleep stage R": "REM", "Sleep stage REM": "REM",
        "?": UNSCORED, "Unscored": UNSCORED, "Sleep stage ?": UNSCORED, "Movement time": UNSCORED, "Movement": UNSCORED,
        "MT": UNSCORED, "n/a": UNSCORED, "Artefact": UNSCORED, "Artifact": UNSCORED, "Unknown": UNSCORED,
    },
    # NSRR XML ``EventConcept`` values (SHHS, MESA, MrOS, CFS, CHAT): R&K numbering after the bar.
    "nsrr": {
        "Wake|0": "W", "Stage 1 sleep|1": "N1", "Stage 2 sleep|2": "N2", "Stage 3 sleep|3": "N3",
        "Stage 4 sleep|4": "N3", "REM sleep|5": "REM", "Movement|6": UNSCORED, "Unscored|9": UNSCORED,
    },
    # One integer per epoch, AASM numbering: 0 W, 1 N1, 2 N2, 3 N3, 4 REM; -1 / 9 unscored.
    "int-aasm": {"0": "W", "1": "N1", "2": "N2", "3": "N3", "4": "REM", "-1": UNSCORED, "9": UNSCORED},
    # One integer per epoch, R&K numbering: 0 W, 1-4 S1-S4 (3, 4 -> N3), 5 REM; 6 movement, 9 unscored.
    "int-rk": {"0": "W", "1": "N1", "2": "N2", "3": "N3", "4": "N3", "5": "REM", "6": UNSCORED, "9": UNSCORED},
}


def normalize_label(label: str) -> str:
    """The form in which labels are compared: case-folded, white space collapsed (``" stage  2 "`` -> ``"stage 2"``)."""
    return " ".join(str(label).split()).casefold()


def resolve_label_map(spec: str | dict | list | tuple) -> dict[str, int]:
    """A label map as ``{normalised label: class index or IGNORE_INDEX}``.

    Parameters
    ----------
    spec : str, dict or list
        The name of a built-in map (:data:`LABEL_MAPS`), a ``{label: stage}`` mapping (stage one of
        ``W, N1, N2, N3, REM`` or ``unscored``), or a list of them, later entries winning.

    Raises
    ------
    ValueError
        For an unknown map name or stage name, naming it.
    """
    parts = list(spec) if isinstance(spec, list | tuple) else [spec]
    out: dict[str, int] = {}
    for part in parts:
        if isinstance(part, str):
            if part not in LABEL_MAPS:
                raise ValueError(f"label map {part!r} unknown: built-in maps are {sorted(LABEL_MAPS)} (or give a mapping)")
            part = LABEL_MAPS[part]
        if not isinstance(part, dict):
            raise ValueError(f"label map entry {part!r}: expected a map name or a {{label: stage}} mapping")
        for label, stage in part.items():
            key = str(stage).strip()
            code = _TARGETS.get(key, _TARGETS.get(key.upper()))
            if code is None:
                raise ValueError(
                    f"label map: {label!r} -> {stage!r}: the stage must be one of {list(STAGES)} or {UNSCORED!r}"
                )
            out[normalize_label(label)] = code
    return out


def map_labels(labels: list[str], label_map: dict[str, int], source: str, map_name: str = "label_map") -> np.ndarray:
    """Class indices of ``labels`` through a map from :func:`resolve_label_map`.

    Raises
    ------
    ValueError
        On a label the map does not know: one line naming ``source``, the label(s) and the map to extend.
    """
    unknown = sorted({lab for lab in labels if normalize_label(lab) not in label_map})
    if unknown:
        raise ValueError(
            f"{source}: unknown sleep-stage label(s) {unknown}. Extend the data set's label map ({map_name}) "
            "with e.g. `label_map: [..., {" + f"{unknown[0]!r}: N2" + "}]` (a stage or 'unscored')."
        )
    return np.array([label_map[normalize_label(lab)] for lab in labels], dtype=np.int64)
