"""Download path for real users: PhysioNet Sleep-EDF (sleep-cassette) through MNE's fetcher."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dsn.data.errors import DataError


def fetch_sleep_edf(
    subjects: Sequence[int],
    recordings: Sequence[int] = (1, 2),
    path: str | Path | None = None,
    base_url: str | None = None,
    on_missing: str = "warn",
) -> Path:
    """Download (or find in the cache) Sleep-EDF sleep-cassette recordings.

    Calls :func:`mne.datasets.sleep_physionet.age.fetch_data`. Files already present in
    ``<path>/physionet-sleep-data/`` are returned without network access.

    Parameters
    ----------
    subjects : subject numbers 0..82 (Sleep-EDF-20 is 0..19).
    recordings : nights (1, 2).
    path : MNE data folder (default: MNE's ``MNE_DATA`` config, usually ``~/mne_data``).
    base_url : mirror to download from (default: PhysioNet).
    on_missing : what to do for subject/night pairs that do not exist in the data set (``"raise"``, ``"warn"``, ``"ignore"``).

    Returns
    -------
    Path : the folder holding the EDF files, to use as ``data.data_dir``.
    """
    from mne.datasets.sleep_physionet import age

    kwargs = {"base_url": base_url} if base_url else {}
    try:
        files = age.fetch_data(
            subjects=list(subjects), recording=list(recordings), path=path, on_missing=on_missing, verbose="error", **kwargs
        )
    except Exception as e:  # network errors come from requests/pooch
        raise DataError(
            f"could not fetch Sleep-EDF subjects {list(subjects)} nights {list(recordings)} "
            f"({type(e).__name__}: {e}). Check the network connection, or download the EDF files by hand and "
            f"put them in {Path(path or '~/mne_data') / 'physionet-sleep-data'}, then set data.data_dir to that folder."
        ) from None
    if not files:
        raise DataError(f"no Sleep-EDF recordings for subjects {list(subjects)} nights {list(recordings)}.")
    return Path(files[0][0]).parent
