"""Sphinx configuration of dsn's documentation site (``make docs``: HTML in docs/_build/html, warnings as errors).

Sphinx + pydata-sphinx-theme, as the libraries dsn builds on (MNE, scikit-learn, Optuna, Lightning) do: autodoc and
numpydoc read the numpydoc docstrings dsn writes, autosummary makes the API reference, myst-parser reads the
Markdown pages (the user guide was the README's reference sections).
"""

from __future__ import annotations

import re
import sys
import types
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this checkout's dsn, installed or not

project = "dsn"
author = "dsn contributors"
copyright = "dsn contributors"
try:
    release = metadata.version("dsn")
except metadata.PackageNotFoundError:
    release = "0+unknown"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3

autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "none"  # the numpydoc sections say the types; signatures keep their defaults
autodoc_mock_imports: list[str] = []
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
suppress_warnings = ["myst.xref_missing"]

html_theme = "pydata_sphinx_theme"
html_title = f"dsn {release}"
html_theme_options = {"navigation_depth": 2, "show_toc_level": 2}
autodoc_inherit_docstrings = False  # overridden Lightning hooks would show Lightning's own docstrings


# ----------------------------------------------------------------------------- docstrings as docutils reads them
# The docstrings are written for a reader of the code; two plain-text habits of theirs mean something else in
# reStructuredText. Both are rewritten here, in the site only (the source keeps its docstrings):
#   - a word ending in "_" before a non-word ("f1_/precision_<class>") is a reference target: escape the "_";
#   - ". " inside a ``literal`` ends the one-line summary that autosummary cuts at the first ". ".
_LITERAL = re.compile(r"(``.+?``)")
_TRAILING_UNDERSCORE = re.compile(r"(?<=\w)_(?=[^\w`]|$)")


def _rewrite(line: str) -> str:
    parts = _LITERAL.split(line)
    return "".join(p.replace(". ", ".\u200b\u00a0") if p.startswith("``") else _TRAILING_UNDERSCORE.sub(r"\\_", p)
                   for p in parts)


def _process_docstring(app, what, name, obj, options, lines):
    lines[:] = [_rewrite(line) for line in lines]


def _skip_type_aliases(app, what, name, obj, skip, options):
    """A module-level type alias (``LSTMState = tuple[Tensor, ...]``) is no class to document."""
    return True if isinstance(obj, types.GenericAlias) else None


def setup(app):
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("autodoc-skip-member", _skip_type_aliases)
