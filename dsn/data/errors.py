"""The data layer's error: the bottom of :mod:`dsn.data`'s imports (``errors`` <- ``edf`` <- ``hypnograms`` <-
``datasets``)."""

from __future__ import annotations

from dsn.errors import DsnError


class DataError(DsnError, ValueError):
    """Bad input data: the message names the file or value and says how to fix it."""
