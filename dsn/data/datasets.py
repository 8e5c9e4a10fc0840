"""Data-set profiles: how a data set's recordings and hypnograms are found, paired and read.

A profile is a small YAML file (built-in ones in ``conf/datasets/``, or a user's own file) with:

``recordings`` / ``hypnograms``
    ``glob`` (one or a list, relative to the data folder, searched recursively with ``**``) and ``pattern``:
    a regular expression searched in the file's path relative to the data folder (``/`` separators) whose
    named groups identify the file (e.g. ``(?P<subject>...)``, ``(?P<night>...)``). Hypnograms may also give
    ``expect``: the hint printed when a recording has no hypnogram.
``pair``, ``subject``, ``night``, ``recording_name``
    Templates over the groups (``"{cohort}-{id}"``; a group that did not match is empty). A recording and a
    hypnogram pair when their ``pair`` values are equal. ``subject`` keeps splits subject-wise; ``night`` is
    the number in its value (``shhs2`` -> 2, ``ses-03`` -> 3; 1 when empty); ``recording_name`` (default: the file name
    without its extension) names the recording in caches and reports and must be unique.
``hypnogram_format`` and ``hypnogram_options``
    One of :data:`dsn.data.hypnograms.FORMATS` and the options of its reader.
``label_map``
    A built-in map name (:data:`dsn.data.labels.LABEL_MAPS`), a ``{label: stage}`` mapping, or a list of them.
``epoch_sec``
    The scoring epoch length of the hypnograms (per-epoch formats; a different ``data.epoch_sec`` is refused).
``channel_aliases``
    ``{canonical: [alias, ...]}``: other labels the same channel has in this data set's files.
``extends``
    Another profile whose keys this one starts from.

The profile's name is its file name without ``.yaml``. This module builds on :mod:`dsn.data.hypnograms` (the
readers, given a profile) and :mod:`dsn.data.edf`; neither imports it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any

import numpy as np

from dsn import resources
from dsn.data import hypnograms
from dsn.data.edf import NotEdfError, read_header
from dsn.data.errors import DataError
from dsn.data.labels import IGNORE_INDEX, resolve_label_map

#: The profile used when none is named (today's Sleep-EDF behaviour).
DEFAULT_PROFILE = "sleep-edf"

_KEYS = {
    "title", "description", "extends", "recording_name", "recordings", "hypnograms", "pair", "subject", "night",
    "hypnogram_format", "hypnogram_options", "label_map", "epoch_sec", "channel_aliases",
}


@dataclass(frozen=True)
class FileRule:
    """How one kind of file (recording or hypnogram) is found and identified."""

    globs: tuple[str, ...]
    pattern: re.Pattern
    expect: str = ""

    def match(self, rel: str) -> dict[str, str] | None:
        m = self.pattern.search(rel)
        return None if m is None else {k: v or "" for k, v in m.groupdict().items()}


@dataclass(frozen=True)
class Profile:
    """A data-set profile (see the module docstring for the keys).

    Attributes
    ----------
    name : str
    source : str, the YAML file it came from.
    recordings, hypnograms : FileRule
    pair, subject, night, recording_name : str, templates over the file-name groups
    hypnogram_format : str
    hypnogram_options : dict
    label_map : dict of normalised label -> class index (``IGNORE_INDEX`` for unscored)
    label_map_spec : the map as written in the profile (for messages and cache keys)
    epoch_sec : float
    channel_aliases : dict of canonical channel -> list of aliases
    """

    name: str
    source: str
    title: str
    recordings: FileRule
    hypnograms: FileRule
    pair: str
    subject: str
    night: str
    recording_name: str | None
    hypnogram_format: str
    hypnogram_options: dict = field(compare=False)
    label_map: dict = field(compare=False)
    label_map_spec: Any = field(compare=False)
    epoch_sec: float = 30.0
    channel_aliases: dict = field(default_factory=dict, compare=False)

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_PROFILE

    def reading_key(self) -> dict[str, Any]:
        """What changes how a hypnogram of this profile is read (enters the cache key of other profiles)."""
        return {
            "dataset": self.name,
            "format": self.hypnogram_format,
            "options": self.hypnogram_options,
            "label_map": self.label_map_spec,
            "epoch_sec": self.epoch_sec,
        }

    def label_map_name(self) -> str:
        return f"label_map of the '{self.name}' profile ({self.source})"


def builtin_profiles() -> list[str]:
    """Names of the built-in profiles (``conf/datasets/``, shipped in the package: :mod:`dsn.resources`)."""
    return resources.list_profiles()


def _profile_path(ref: str | Path) -> Path:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        raise DataError(f"{path}: data-set profile not found. Give a YAML file or one of {builtin_profiles()}.")
    cand = Path("conf") / "datasets" / f"{ref}.yaml"  # a project's own conf/datasets/ first
    if cand.is_file():
        return cand
    found = resources.find("profile", str(ref))
    if found:
        return found
    raise DataError(
        f"data.dataset={str(ref)!r}: no such data-set profile. Built-in: {builtin_profiles()}; or give the path "
        "of your own YAML profile (see conf/datasets/generic.yaml)."
    )


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: could not read the data-set profile ({e}).") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a data-set profile must be a mapping of keys (see conf/datasets/generic.yaml).")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise DataError(f"{path}: unknown profile key(s) {unknown}. Known keys: {sorted(_KEYS)}.")
    base = raw.get("extends")
    if base:
        base_path = _profile_path(base)
        if base_path.resolve() in seen:
            raise DataError(f"{path}: 'extends: {base}' loops back to itself.")
        merged = _read_yaml(base_path, (*seen, path.resolve()))
        for key in ("recordings", "hypnograms", "hypnogram_options"):
            if isinstance(raw.get(key), dict):
                raw[key] = {**merged.get(key, {}), **raw[key]}
        raw = {**merged, **raw}
    return raw


def _templates_ok(path: Path, rule: str, template: str, groups: set[str]) -> None:
    names = {f for _, f, _, _ in Formatter().parse(template) if f}
    missing = names - groups - {"stem"}
    if missing:
        raise DataError(f"{path}: '{rule}: {template}' uses {sorted(missing)}, which the patterns do not define.")


def _rule(path: Path, key: str, value: Any) -> FileRule:
    if not isinstance(value, dict) or "glob" not in value or "pattern" not in value:
        raise DataError(f"{path}: '{key}' needs a 'glob' and a 'pattern' (see conf/datasets/generic.yaml).")
    globs = value["glob"] if isinstance(value["glob"], list) else [value["glob"]]
    try:
        pattern = re.compile(value["pattern"])
    except re.error as e:
        raise DataError(f"{path}: '{key}.pattern' is not a valid regular expression ({e}).") from None
    return FileRule(tuple(str(g) for g in globs), pattern, str(value.get("expect", "")))


def load_profile(ref: str | Path | Profile | None = None) -> Profile:
    """Load a data-set profile by built-in name (``nsrr``) or YAML path; ``None`` is :data:`DEFAULT_PROFILE`.

    Raises
    ------
    DataError
        For an unknown name, an unreadable file, an unknown key, a bad pattern or label map.
    """
    if isinstance(ref, Profile):
        return ref
    path = _profile_path(DEFAULT_PROFILE if ref is None else ref)
    return _load(str(path.resolve()), path.stat().st_mtime_ns, str(path))


@functools.lru_cache(maxsize=32)
def _load(resolved: str, mtime_ns: int, shown: str) -> Profile:
    """:func:`load_profile` of one file version (profiles are read once per process, not once per recording)."""
    path = Path(shown)
    raw = _read_yaml(Path(resolved))
    missing = [k for k in ("recordings", "hypnograms", "pair", "subject", "hypnogram_format") if k not in raw]
    if missing:
        raise DataError(f"{path}: the data-set profile lacks {missing} (see conf/datasets/generic.yaml).")
    recs, hyps = _rule(path, "recordings", raw["recordings"]), _rule(path, "hypnograms", raw["hypnograms"])
    if raw["hypnogram_format"] not in hypnograms.FORMATS:
        raise DataError(
            f"{path}: hypnogram_format {raw['hypnogram_format']!r} unknown; one of {list(hypnograms.FORMATS)}."
        )
    spec = raw.get("label_map", "aasm")
    try:
        label_map = resolve_label_map(spec)
    except ValueError as e:
        raise DataError(f"{path}: {e}") from None
    aliases = raw.get("channel_aliases") or {}
    if not isinstance(aliases, dict) or not all(isinstance(v, list) for v in aliases.values()):
        raise DataError(f"{path}: channel_aliases must map each channel to a list of aliases ({{C4-M1: [C4-A1]}}).")
    groups = set(recs.pattern.groupindex) & set(hyps.pattern.groupindex)
    for key in ("pair", "subject", "night"):
        _templates_ok(path, key, str(raw.get(key, "")), groups)
    if raw.get("recording_name"):
        _templates_ok(path, "recording_name", str(raw["recording_name"]), set(recs.pattern.groupindex))
    return Profile(
        name=path.stem,
        source=str(path),
        title=str(raw.get("title", "PSG")),
        recordings=recs,
        hypnograms=hyps,
        pair=str(raw["pair"]),
        subject=str(raw["subject"]),
        night=str(raw.get("night", "")),
        recording_name=str(raw["recording_name"]) if raw.get("recording_name") else None,
        hypnogram_format=str(raw["hypnogram_format"]),
        hypnogram_options=dict(raw.get("hypnogram_options") or {}),
        label_map=label_map,
        label_map_spec=spec,
        epoch_sec=float(raw.get("epoch_sec", 30.0)),
        channel_aliases={str(k): [str(a) for a in v] for k, v in aliases.items()},
    )


# ------------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class RecordingFiles:
    """A PSG file and its hypnogram.

    Attributes
    ----------
    name : str
        Recording name (Sleep-EDF: the PSG file name without ``-PSG.edf``, e.g. ``SC4001E0``; other data
        sets: the profile's ``recording_name``, by default the file name without extension). Unique in a data set.
    subject : str
        Subject identifier by the profile's rule (Sleep-EDF: study prefix + subject number, ``SC400``, unique
        across SC and ST studies; NSRR: ``shhs-200001`` for both visits; BIDS: ``sub-01``).
    night : int
        Night number (Sleep-EDF: 1 or 2; NSRR: the visit; BIDS: the session's number).
    psg, hypnogram : Path
    profile : Profile
        The data-set profile that found the pair and says how the hypnogram is read (never ``None``: the
        default is the loaded ``sleep-edf`` profile).
    """

    name: str
    subject: str
    night: int
    psg: Path
    hypnogram: Path
    profile: Profile = field(compare=False, repr=False)


@dataclass
class Scan:
    """What :func:`scan` found in a data folder.

    Attributes
    ----------
    recordings : list of RecordingFiles, the paired recordings (sorted by name)
    problems : list of str, one line each; each would stop ``dsn fit``
    notes : list of str, one line each; things left out that do not stop it (a hypnogram without recording)
    """

    profile: Profile
    data_dir: Path
    recordings: list[RecordingFiles] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fill(template: str, groups: dict[str, str], stem: str) -> str:
    return template.format_map({**groups, "stem": stem})


def _night(value: str) -> int | None:
    digits = re.findall(r"\d+", value)
    if not value:
        return 1
    return int(digits[-1]) if digits else None


def _files(data_dir: Path, rule: FileRule) -> list[tuple[Path, dict[str, str]]]:
    seen, out = set(), []
    for g in rule.globs:
        for path in sorted(data_dir.glob(g)):
            if path in seen or not path.is_file():
                continue
            seen.add(path)
            groups = rule.match(path.relative_to(data_dir).as_posix())
            if groups is not None:
                out.append((path, groups))
    return sorted(out, key=lambda t: t[0])


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def scan(data_dir: str | Path, profile: str | Path | Profile | None = None) -> Scan:
    """Find and pair a data set's recordings and hypnograms, collecting every problem as one line.

    Nothing is read but file names. A recording without hypnogram, with several, two recordings with one name
    or one subject and night are problems; a hypnogram without a recording is a note.

    Raises
    ------
    DataError
        If the folder does not exist or the profile cannot be loaded.
    """
    prof = load_profile(profile)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir}: data folder not found. Create one with `dsn synth {data_dir} --subjects 4` "
            "or download Sleep-EDF (see README, 'Real Sleep-EDF')."
        )
    out = Scan(prof, data_dir)
    hyps: dict[str, list[Path]] = {}
    for path, groups in _files(data_dir, prof.hypnograms):
        hyps.setdefault(_fill(prof.pair, groups, _stem(path)), []).append(path)
    used: set[str] = set()
    names: dict[str, Path] = {}
    nights: dict[tuple[str, int], Path] = {}
    for path, groups in _files(data_dir, prof.recordings):
        key = _fill(prof.pair, groups, _stem(path))
        used.add(key)
        problem = _pair_one(out, path, groups, hyps.get(key, []), names, nights)
        if problem:
            out.problems.append(problem)
    for key, paths in sorted(hyps.items()):
        if key not in used:
            out.notes.extend(f"{p}: hypnogram without a recording (left out)." for p in paths)
    out.recordings.sort(key=lambda r: r.name)
    if not out.recordings and not out.problems:
        out.problems.append(
            f"{data_dir}: no {prof.title} files ({', '.join(prof.recordings.globs)}) found"
            + ("." if prof.is_default else f" for the '{prof.name}' data-set profile ({prof.source}).")
        )
    return out


def _pair_one(found: Scan, path: Path, groups: dict[str, str], cands: list[Path], names: dict[str, Path],
              nights: dict[tuple[str, int], Path]) -> str | None:
    """Pair one recording with its hypnogram (``cands``: those with its pairing key): add it to
    ``found.recordings`` and to ``names``/``nights`` (the names and nights taken so far), or return the problem."""
    prof, stem = found.profile, _stem(path)
    if not cands:
        hint = _fill(prof.hypnograms.expect, groups, stem) if prof.hypnograms.expect else prof.hypnograms.globs[0]
        return f"{path}: no hypnogram found. Expected {hint}. Add it or remove the recording."
    if len(cands) > 1:
        return f"{path}: several hypnograms match: {', '.join(str(c) for c in cands)}. Keep one."
    subject = _fill(prof.subject, groups, stem)
    night = _night(_fill(prof.night, groups, stem))
    if night is None:
        return (f"{path}: night {_fill(prof.night, groups, stem)!r} has no number (profile '{prof.name}': "
                f"night: {prof.night!r}). Number the sessions or change the profile's night rule.")
    name = _fill(prof.recording_name, groups, stem) if prof.recording_name else stem
    if name in names:
        return f"{path}: recording name {name!r} also used by {names[name]}. Rename one."
    if (subject, night) in nights:
        return (f"{path}: subject {subject} night {night} also found in {nights[subject, night]}. Keep one, or "
                f"change the profile's night rule ({prof.night!r}) to tell them apart.")
    names[name], nights[subject, night] = path, path
    found.recordings.append(RecordingFiles(name, subject, night, path, cands[0], prof))
    return None


def find_recordings(data_dir: str | Path, profile: str | Path | Profile | None = None) -> list[RecordingFiles]:
    """Find recording/hypnogram pairs in ``data_dir`` (searched recursively) by a data-set profile.

    ``profile`` is a built-in name (``sleep-edf``, ``nsrr``, ``bids``, ``generic``), a YAML path or a loaded
    :class:`Profile`; ``None`` is :data:`DEFAULT_PROFILE` (``sleep-edf``: files paired by the first 7
    characters of their names, ``SC4001E0-PSG.edf`` <-> ``SC4001EC-Hypnogram.edf``).

    Raises
    ------
    DataError
        If the folder does not exist or holds no recording, if a recording has no hypnogram or several, or
        two recordings share a name or a subject and night (the first such problem; ``dsn data`` lists all).
    """
    found = scan(data_dir, profile)
    if found.problems:
        raise DataError(found.problems[0])
    return found.recordings


def describe_name(path: str | Path, profile: str | Path | Profile | None) -> dict[str, str | int]:
    """Subject, night, kind (``recording``/``hypnogram``), pairing key and the pattern's groups of one file by a
    profile's rules (the path is matched against its recording pattern, then its hypnogram pattern).

    Raises
    ------
    DataError
        If neither the recording nor the hypnogram pattern matches the path.
    """
    prof = load_profile(profile)
    rel = Path(path).as_posix()
    for kind, rule in (("recording", prof.recordings), ("hypnogram", prof.hypnograms)):
        groups = rule.match(rel)
        if groups is not None:
            stem = _stem(Path(path))
            night = _night(_fill(prof.night, groups, stem))
            return {
                **groups,  # the profile's values below win over the pattern's groups of the same name
                "subject": _fill(prof.subject, groups, stem),
                "night": night if night is not None else _fill(prof.night, groups, stem),
                "kind": kind,
                "key": _fill(prof.pair, groups, stem),
            }
    raise DataError(
        f"{Path(path).name}: not a file name of the '{prof.name}' data set (recordings: "
        f"{prof.recordings.pattern.pattern}; hypnograms: {prof.hypnograms.pattern.pattern})."
    )


# ------------------------------------------------------------------------------------------- one hypnogram
#: A hypnogram file's form -> the built-in profile that reads it (:func:`profile_for_hypnogram`).
_PROFILE_BY_FORM = {"edf": "sleep-edf", "xml": "nsrr", "events": "bids", "table": "generic"}


def profile_for_hypnogram(path: str | Path, profile: str | Path | Profile | None = None) -> Profile:
    """The profile that reads a hypnogram file given alone (``dsn predict --hypnogram``): ``profile`` when
    given, else the built-in profile of the file's form: an EDF+ file (``sleep-edf``: R&K annotations), an XML
    file (``nsrr``), a BIDS ``*_events.tsv`` (``bids``), any other text table (``generic``: CSV/TSV/one
    label per line).

    Raises
    ------
    DataError
        For a file that is missing or none of these forms.
    """
    if profile is not None:
        return load_profile(profile)
    path = Path(path)
    try:
        read_header(path)  # an EDF+ file (a missing or truncated one is refused here)
        return load_profile(_PROFILE_BY_FORM["edf"])
    except NotEdfError:
        pass
    with open(path, "rb") as f:
        head = f.read(512)
    if path.suffix.lower() == ".xml" or head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        form = "xml"
    elif path.name.lower().endswith("_events.tsv"):
        form = "events"
    elif b"\x00" not in head:
        form = "table"
    else:
        raise DataError(
            f"{path}: not a hypnogram dsn reads (EDF+ annotations, NSRR XML, BIDS *_events.tsv, CSV/TSV/text)."
        )
    return load_profile(_PROFILE_BY_FORM[form])


def expert_labels(hypnogram: str | Path, psg: str | Path, n_epochs: int, epoch_sec: float = 30.0,
                  profile: str | Path | Profile | None = None) -> np.ndarray:
    """``(n_epochs,)`` labels of an expert hypnogram on a recording's epoch grid, read and placed as ``dsn fit``
    reads a data set's (:func:`dsn.data.hypnograms.place`: the start-time offset from the recording's header,
    the scoring epoch length checked), with the part outside the recording cropped; ``IGNORE_INDEX`` where
    unscored. ``profile``: how to read it (default: by the file's form, :func:`profile_for_hypnogram`).

    Raises
    ------
    DataError
        For an unreadable hypnogram, an unknown label, or one that does not fit the recording (one line each).
    """
    prof = profile_for_hypnogram(hypnogram, profile)
    hyp, codes = hypnograms.read(hypnogram, prof)
    y = hypnograms.place(hyp, codes, n_epochs, epoch_sec, read_header(psg).start, "crop", prof.epoch_sec, str(psg))
    y[y == hypnograms.UNANNOTATED] = IGNORE_INDEX
    return y
