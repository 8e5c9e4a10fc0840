"""Stacked configs that change the network: a new ``class_path`` drops the previous class's keys.

``--config conf/demo.yaml --config conf/models/attnsleep.yaml``: demo sets DeepFeatureNet's ``net.bn_momentum``,
the overlay names another encoder. As in jsonargparse / LightningCLI subclass mode, a source (a config file, a
command-line ``--net.*`` argument, a sweep's ``config`` choice) that sets ``net.class_path`` (or
``finetune.net.class_path``) to another class drops the keys of that section that earlier sources set (the flat
DeepFeatureNet / DeepSleepNet keys and ``init_args``): they go back to their defaults unless a later source sets
them again. Setting the same class again keeps them. The data-linked keys (``net.n_chans``, ``net.sfreq``) are
never dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dsn.utils import section as nested_section
from dsn.utils import set_dotted

#: The config sections whose ``class_path`` names a network.
SECTIONS = ("net", "finetune.net")
#: Keys of a network section that follow the data (never dropped).
LINKED = ("n_chans", "sfreq")


def class_name(class_path: Any) -> str:
    """The class a ``class_path`` names, for comparing two spellings (``dsn.models.DeepFeatureNet`` =
    ``DeepFeatureNet``; ``braindecode.models.USleep`` = ``USleep``)."""
    return str(class_path).rpartition(".")[2].lower()


def section_keys(d: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The keys a nested (or dotted) config mapping ``d`` sets in ``section``, relative to it (``bn_momentum``,
    ``class_path``, ``init_args``)."""
    node: Any = d
    for part in section.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    out = dict(node) if isinstance(node, Mapping) else {}
    prefix = section + "."
    for k, v in d.items():  # dotted keys at the top level (`net.bn_momentum: 0.1`, command-line arguments)
        if isinstance(k, str) and k.startswith(prefix):
            out[k[len(prefix):].split(".")[0]] = v
    return out


def _argv_sources(argv: Sequence[str]) -> list[dict[str, Any]]:
    """Each source of ``argv`` in order as a mapping: a ``--config`` file's YAML, a ``--key value`` argument."""
    import yaml

    out: list[dict[str, Any]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        key, eq, value = a[2:].partition("=") if a.startswith("--") else ("", "", "")
        if key and not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 1
        if key == "config" and Path(value).is_file():
            try:
                loaded = yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError:
                loaded = None  # the parser reports it
            out.append(loaded if isinstance(loaded, dict) else {})
        elif key:
            out.append({key: yaml.safe_load(value) if value else value})
        i += 1
    return out


def stale_keys(sources: Sequence[Mapping[str, Any]], current: Mapping[str, str] | None = None) -> dict[str, set[str]]:
    """For each network section, the keys set before its last change of class and not set again after it.

    ``current``: each section's class before the first source (the defaults: ``DeepFeatureNet``, ``bilstm``).
    """
    current = dict(current or {"net": "DeepFeatureNet", "finetune.net": "bilstm"})
    out: dict[str, set[str]] = {}
    for section in SECTIONS:
        cls, before, after = class_name(current[section]), set(), set()
        for src in sources:
            keys = section_keys(src, section)
            if "class_path" in keys and class_name(keys["class_path"]) != cls:
                cls = class_name(keys["class_path"])
                before, after = before | after, set()
            after |= set(keys) - {"class_path"}
        out[section] = before - after - set(LINKED)
    return out


def drop_stale(cfg, stale: Mapping[str, set[str]], parser) -> None:
    """Set the ``stale`` keys of ``cfg`` (a parsed namespace) back to the parser's defaults, in place."""
    if not any(stale.values()):
        return
    defaults = parser.get_defaults()
    for section, keys in stale.items():
        for k in keys:
            key = f"{section}.{k}"
            if key in defaults:
                cfg[key] = defaults[key]


def apply_values(d: dict[str, Any], values: Mapping[str, Any], defaults) -> None:
    """Set the dotted ``values`` in the nested dict ``d`` (a parsed config as a dict), in place: a network
    section's ``class_path`` changed to another class first resets that section to ``defaults`` (a namespace or
    mapping with dotted access), its linked keys kept."""
    for section in SECTIONS:
        new = values.get(f"{section}.class_path")
        node = nested_section(d, section)
        if new is not None and class_name(new) != class_name(node.get("class_path", "")):
            for k in list(node):
                if k not in LINKED:
                    node[k] = defaults[f"{section}.{k}"] if f"{section}.{k}" in defaults else node[k]
    for key, value in values.items():
        set_dotted(d, key, value)


def overlay_values(path: str) -> dict[str, Any]:
    """A config file's keys as dotted ``{key: value}`` (``init_args`` kept whole), for stacking it on a parsed
    config (a sweep's ``config`` choice).

    Raises
    ------
    ConfigError
        When the file does not exist or is not a YAML mapping.
    """
    import yaml

    from dsn.errors import ConfigError
    from dsn.resources import resolve_recipe

    p = Path(resolve_recipe(str(path)))
    if not p.is_file():
        raise ConfigError(f"config={path}: file not found (a config file to stack, e.g. conf/models/tinysleepnet.yaml).")
    raw = yaml.safe_load(p.read_text())
    if not isinstance(raw, dict):
        raise ConfigError(f"config={path}: not a YAML mapping of config keys.")
    return _dotted(raw)


def _dotted(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and not key.endswith("init_args") and v:
            out.update(_dotted(v, key + "."))
        else:
            out[key] = v
    return out
