"""Which process this is under distributed training, known before any process group exists."""

from __future__ import annotations

import os


def is_global_zero() -> bool:
    """Whether this process is global rank 0 (or not distributed at all), known before any process group exists.

    Read from what the launchers set: ``RANK`` (torchrun), Lightning's own launcher (``LOCAL_RANK`` and
    ``NODE_RANK``, set in the processes it starts), then ``SLURM_PROCID`` / ``JSM_NAMESPACE_RANK`` (SLURM, LSF).
    Lightning's launcher starts the other ranks at the first ``trainer.fit`` by running the same command
    again, so whatever a command does outside ``trainer.fit`` that writes (MLflow runs, files, the registry)
    must be guarded by this.
    """
    env = os.environ
    if env.get("RANK", "").strip():
        return int(env["RANK"]) == 0
    if any(env.get(k, "").strip() for k in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK")):
        node = env.get("NODE_RANK", "").strip() or env.get("GROUP_RANK", "").strip() or "0"
        return int(env.get("LOCAL_RANK", "").strip() or 0) == 0 and int(node) == 0
    for key in ("SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if env.get(key, "").strip():
            return int(env[key]) == 0
    return True
