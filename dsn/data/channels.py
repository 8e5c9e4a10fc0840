"""Which signals of a PSG file to read: channel names, aliases and bipolar derivations.

A channel is asked for by name (``data.channels: [EEG Fpz-Cz, EOG(L)]``) and found in a file's labels by
these rules, in order:

1. the exact label (``EEG`` in an NSRR file is ``EEG``, never ``EEG(sec)``);
2. an alias: the name's group in the alias tables (the built-in :data:`BUILTIN_ALIASES`, then a data set
   profile's ``channel_aliases`` and the user's ``data.channel_aliases``, each ``{canonical: [alias, ...]}``)
   gives more names to look for;
3. every name is compared with the labels up to case, a leading signal type (``EEG Fpz-Cz`` = ``Fpz-Cz``,
   ``EOG E1-M2`` = ``E1-M2``) and the two spellings of the mastoid reference (``A1``/``A2`` = ``M1``/``M2``),
   so ``C4-M1`` finds ``EEG C4-A1``.

Two labels that match equally well are an error (the message lists them), never a silent choice.

A **bipolar derivation** of two referential channels is written ``"NAME=PLUS-MINUS"``, e.g.
``"C4-M1=C4-M1"`` (read ``C4`` and ``M1`` and subtract); ``PLUS`` and ``MINUS`` are found by the rules above.
When a label itself holds a ``-`` put spaces around the minus sign: ``"Fpz-Cz=EEG Fpz - EEG Cz"``. A
derivation is used only when the file has no channel of that name (the stored derivation wins).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "BUILTIN_ALIASES",
    "DEFAULT_CHANNELS",
    "ChannelSpec",
    "channel_names",
    "find_label",
    "merge_aliases",
    "parse_channel",
    "pick_channels",
    "resolve_channels",
]

#: ``data.channels`` by default: the paper's single EEG derivation.
DEFAULT_CHANNELS = ("EEG Fpz-Cz",)

#: Built-in alias groups ``{canonical: [alias, ...]}``: spellings of the same derivation in common data sets
#: (Sleep-EDF, AASM montages, NSRR's EOG labels). Case, a leading ``EEG``/``EOG``/``EMG`` and A1/A2 = M1/M2
#: are ignored anyway (see the module docstring), so only spellings those rules do not reach are needed.
BUILTIN_ALIASES: dict[str, list[str]] = {
    "Fpz-Cz": ["EEG Fpz-Cz"],
    "Pz-Oz": ["EEG Pz-Oz"],
    "C4-M1": ["C4-A1", "EEG C4-A1"],
    "C3-M2": ["C3-A2", "EEG C3-A2"],
    "F4-M1": ["F4-A1"],
    "F3-M2": ["F3-A2"],
    "O2-M1": ["O2-A1"],
    "O1-M2": ["O1-A2"],
    "E1-M2": ["EOG(L)", "EOG L", "EOG left", "LOC", "LOC-A2", "LOC-M2", "E1-A2"],
    "E2-M1": ["EOG(R)", "EOG R", "EOG right", "ROC", "ROC-A1", "ROC-M1", "E2-A1"],
    "Chin": ["EMG submental", "Chin EMG", "EMG Chin", "Chin1-Chin2"],
}

_TYPE_PREFIX = re.compile(r"^(eeg|eog|emg|ecg)[\s_:]+(?=\S)")
_MASTOID = re.compile(r"(?<![a-z0-9])a([12])(?![a-z0-9])")


@dataclass(frozen=True)
class ChannelSpec:
    """One channel of ``data.channels``: a label to find, or a derivation ``plus - minus``.

    Attributes
    ----------
    name : str
        The channel's name (what the model, the cache and the outputs call it).
    plus : str
        The label to read (``name`` itself for a plain channel).
    minus : str or None
        The reference to subtract (a bipolar derivation), ``None`` for a plain channel.
    """

    name: str
    plus: str
    minus: str | None = None

    def __str__(self) -> str:
        return self.name if self.minus is None else f"{self.name}={self.plus} - {self.minus}"


def parse_channel(text: str | ChannelSpec) -> ChannelSpec:
    """A :class:`ChannelSpec` from ``"LABEL"`` or ``"NAME=PLUS-MINUS"`` (see the module docstring).

    Raises
    ------
    ValueError
        For an empty name, or a derivation whose minus sign cannot be told from the labels' own hyphens.
    """
    if isinstance(text, ChannelSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"channels: {text!r} is not a channel name; give a label such as 'EEG Fpz-Cz'")
    if "=" not in text:
        return ChannelSpec(text.strip(), text.strip())
    name, expr = (part.strip() for part in text.split("=", 1))
    if " - " in expr:
        plus, minus = (part.strip() for part in expr.split(" - ", 1))
    elif expr.count("-") == 1:
        plus, minus = (part.strip() for part in expr.split("-"))
    else:
        plus = minus = ""
    if not name or not plus or not minus:
        raise ValueError(
            f"channels: {text!r} is not a derivation 'NAME=PLUS-MINUS' (e.g. 'C4-M1=C4-M1'); when the labels "
            "contain '-' put spaces around the minus sign: 'Fpz-Cz=EEG Fpz - EEG Cz'"
        )
    return ChannelSpec(name, plus, minus)


def channel_names(channels: Iterable[str | ChannelSpec]) -> list[str]:
    """The names of ``channels`` (a derivation's name, not its formula)."""
    return [parse_channel(c).name for c in channels]


def merge_aliases(*tables: Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """One ``{canonical: [alias, ...]}`` table from several (later tables add to earlier ones)."""
    out: dict[str, list[str]] = {}
    for table in tables:
        for canonical, aliases in (table or {}).items():
            if isinstance(aliases, str):
                aliases = [aliases]
            names = out.setdefault(str(canonical), [])
            names.extend(str(a) for a in aliases if str(a) not in names)
    return out


def _key(label: str) -> str:
    text = " ".join(str(label).lower().split())
    text = _TYPE_PREFIX.sub("", text)
    return _MASTOID.sub(r"m\1", text)


def _names_to_try(name: str, aliases: Mapping[str, Sequence[str]]) -> list[str]:
    """``name`` and every name in an alias group that contains it (compared by :func:`_key`), in table order."""
    out = [name]
    keys = {_key(name)}
    grown = True
    while grown:  # groups that share a member are one group
        grown = False
        for canonical, group in aliases.items():
            members = [canonical, *group]
            if keys & {_key(m) for m in members}:
                for m in members:
                    if m not in out:
                        out.append(m)
                        grown = grown or _key(m) not in keys
                        keys.add(_key(m))
    return out


class ChannelLookupError(ValueError):
    """A channel that is not in a file, or matches two of its labels; the message is one line."""


def find_label(name: str, labels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None) -> str:
    """The file label that ``name`` means (the rules of the module docstring).

    Raises
    ------
    ChannelLookupError
        When no label matches (the message lists the names tried) or two labels match equally well.
    """
    if name in labels:
        return name
    tried = _names_to_try(name, merge_aliases(BUILTIN_ALIASES, aliases))
    for candidate in tried:  # an alias spelt exactly as in the file
        if candidate in labels:
            return candidate
    keys = {_key(c) for c in tried}
    found = [label for label in labels if _key(label) in keys]
    if len(found) == 1:
        return found[0]
    if found:
        raise ChannelLookupError(
            f"channel '{name}' matches several channels of this file: {', '.join(found)}; name the one to use exactly"
        )
    raise ChannelLookupError(
        f"channel '{name}' not found (tried {', '.join(tried)}; case, an EEG/EOG/EMG prefix and A1/A2 = M1/M2 "
        f"ignored). Channels in this file: {', '.join(labels)}"
    )


def resolve_channels(
    channels: Sequence[str | ChannelSpec], labels: Sequence[str], aliases: Mapping[str, Sequence[str]] | None = None
) -> list[tuple[ChannelSpec, str, str | None]]:
    """``(spec, plus label, minus label or None)`` of every channel: the file labels to read for it.

    A derivation whose name is itself a channel of the file reads that channel (no subtraction).

    Raises
    ------
    ChannelLookupError
        For the first channel (or derivation term) the file lacks.
    """
    out = []
    for c in channels:
        spec = parse_channel(c)
        if spec.minus is None:
            out.append((spec, find_label(spec.name, labels, aliases), None))
            continue
        try:
            out.append((spec, find_label(spec.name, labels, aliases), None))
            continue
        except ChannelLookupError:
            pass
        try:
            out.append((spec, find_label(spec.plus, labels, aliases), find_label(spec.minus, labels, aliases)))
        except ChannelLookupError as e:
            raise ChannelLookupError(f"derivation '{spec}': {e}") from None
    return out


def pick_channels(channels: list[str] | tuple[str, ...] | None, channel: str | None = None) -> list[str]:
    """``data.channels``, or the one channel of the deprecated ``data.channel``.

    Raises
    ------
    ValueError
        When both are given and disagree.
    """
    channels = list(DEFAULT_CHANNELS if channels is None else channels)
    if channel is None:
        return channels
    if channels not in (list(DEFAULT_CHANNELS), [channel]):
        raise ValueError(f"channel={channel!r} and channels={channels}: give only channels (channel is its "
                         "deprecated one-channel spelling)")
    return [channel]
