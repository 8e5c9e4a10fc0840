"""The one exception type of the dsn library, and its kinds.

The library raises :class:`DsnError` (or a subclass) for every user error: bad configuration, bad
input data, an unusable tracking store. The message names the file, key or value and says how to fix
it. Only the command line (:mod:`dsn.cli`) prints it, as one ``dsn <cmd>: error: ...`` line, and exits.
"""

from __future__ import annotations


class DsnError(Exception):
    """A user error: the message names what is wrong (file, key, value) and how to fix it."""


class ConfigError(DsnError, ValueError):
    """An invalid configuration value or sweep specification (names the dotted key and the allowed values)."""


class ModelError(DsnError, ValueError):
    """A model reference that cannot be resolved or loaded, or a model that does not fit the input."""


class LegacyModelError(ModelError):
    """A model stored in a format dsn no longer loads (a pickled model of an older dsn); the message says
    how to convert it (``dsn registry upgrade REF``)."""


class Pruned(Exception):
    """A run stopped on purpose before its end (e.g. an Optuna pruner): not a failure.

    Not a :class:`DsnError`: it is control flow, caught by the command that asked for it.
    """


class CvError(DsnError, RuntimeError):
    """Folds of a cross-validation that failed or have not finished (the message names them and their logs)."""
