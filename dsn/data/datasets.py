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

The profile's name is its file name without ``.yaml``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Formatter
from typing import Any

from dsn.data.edf import DataError, RecordingFiles
from dsn.data.labels import resolve_label_map

#: The profile used when none is named (today's Sleep-EDF behaviour).
DEFAULT_PROFILE = "sleep-edf"

_KEYS = {
    "title", "description", "extends", "recording_name", "recordings", "hypnograms", "pair", "subject", "night",
    "hypnogram_format", "hypnogram_options", "label_map", "epoch_sec", "channel_aliases",
}
_REPO_CONF = Path(__file__).resolve().parents[2] / "conf" / "datasets"


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
    """Names of the profiles in ``conf/datasets/``."""
    return sorted(p.stem for p in _REPO_CONF.glob("*.yaml"))


def _profile_path(ref: str | Path) -> Path:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        raise DataError(f"{path}: data-set profile not found. Give a YAML file or one of {builtin_profiles()}.")
    for folder in (Path("conf") / "datasets", _REPO_CONF):
        cand = folder / f"{ref}.yaml"
        if cand.is_file():
            return cand
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
    from dsn.data.hypnograms import FORMATS

    if raw["hypnogram_format"] not in FORMATS:
        raise DataError(f"{path}: hypnogram_format {raw['hypnogram_format']!r} unknown; one of {list(FORMATS)}.")
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
        stem = _stem(path)
        key = _fill(prof.pair, groups, stem)
        cands = hyps.get(key, [])
        used.add(key)
        if not cands:
            hint = _fill(prof.hypnograms.expect, groups, stem) if prof.hypnograms.expect else prof.hypnograms.globs[0]
            out.problems.append(f"{path}: no hypnogram found. Expected {hint}. Add it or remove the recording.")
            continue
        if len(cands) > 1:
            out.problems.append(f"{path}: several hypnograms match: {', '.join(str(c) for c in cands)}. Keep one.")
            continue
        subject = _fill(prof.subject, groups, stem)
        night = _night(_fill(prof.night, groups, stem))
        if night is None:
            out.problems.append(
                f"{path}: night {_fill(prof.night, groups, stem)!r} has no number (profile '{prof.name}': "
                f"night: {prof.night!r}). Number the sessions or change the profile's night rule."
            )
            continue
        name = _fill(prof.recording_name, groups, stem) if prof.recording_name else stem
        if name in names:
            out.problems.append(f"{path}: recording name {name!r} also used by {names[name]}. Rename one.")
            continue
        if (subject, night) in nights:
            out.problems.append(
                f"{path}: subject {subject} night {night} also found in {nights[subject, night]}. Keep one, or "
                f"change the profile's night rule ({prof.night!r}) to tell them apart."
            )
            continue
        names[name], nights[subject, night] = path, path
        out.recordings.append(RecordingFiles(name, subject, night, path, cands[0], None if prof.is_default else prof))
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


def describe_name(path: str | Path, profile: str | Path | Profile | None) -> dict[str, str | int]:
    """Subject, night, kind and pairing key of one file by a profile's rules (see :func:`dsn.data.edf.parse_name`).

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
                "subject": _fill(prof.subject, groups, stem),
                "night": night if night is not None else _fill(prof.night, groups, stem),
                "kind": kind,
                "key": _fill(prof.pair, groups, stem),
                **groups,
            }
    raise DataError(
        f"{Path(path).name}: not a file name of the '{prof.name}' data set (recordings: "
        f"{prof.recordings.pattern.pattern}; hypnograms: {prof.hypnograms.pattern.pattern})."
    )
