"""A fit stopped by a real signal, at many moments, resumes and finishes with the figures of an uninterrupted fit.

Every case runs ``dsn fit`` in a subprocess that sends itself SIGTERM (or SIGINT) at a chosen moment -- before,
inside or after an optimizer step, in a training or validation step, while a checkpoint is being written, after
training -- then the same command with ``--resume last``; the selected models' figures of both stages must be
those of an uninterrupted fit with the same seed, and no MLflow run may be left RUNNING or FAILED.

Run as a script (``python tests/test_interrupt.py MOMENT -- FIT ARGS``) this file is that subprocess: it wraps
the method named by MOMENT (``[stage:]target:when:n``) so that its ``n``-th call sends the signal, then runs
``dsn fit FIT ARGS``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "--config", "conf/demo.yaml", "--config", "conf/debug.yaml",
    "--data.n_folds", "3", "--data.max_shift", "0.1",
    "--net.small_kernel", "50",
    "--finetune.net.hidden_size", "16", "--finetune.net.shortcut_size", "32",
    "--finetune.batch_size", "2", "--finetune.seq_len", "5", "--finetune.ema_decay", "0.9",
    "--pretrain.trainer.max_epochs", "2", "--pretrain.trainer.limit_train_batches", "3",
    "--finetune.trainer.max_epochs", "2", "--finetune.trainer.limit_train_batches", "4",
    "--finetune.trainer.limit_val_batches", "1.0",
    "--pretrain.trainer.enable_progress_bar", "false", "--finetune.trainer.enable_progress_bar", "false",
    "--data.progress", "false",
]


# ----------------------------------------------------------------------------- the subprocess
def _install(moment: str) -> None:
    """Wrap the target of ``moment`` (``stage:target:when:n`` or ``target:when:n``) to signal on its n-th call."""
    parts = moment.split(":")
    stage, (target, when, n) = (parts[0], parts[1:]) if len(parts) == 4 else (None, parts)
    signum = signal.SIGINT if when.endswith("-int") else signal.SIGTERM
    when, n, calls = when.removesuffix("-int"), int(n), [0]

    def fire() -> None:
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signum)

    def wrap(owner, name: str) -> None:
        original = getattr(owner, name)

        def wrapped(*a, **k):
            if when == "before":
                fire()
            if when == "inside":  # inside the optimizer step: after forward + backward, before the update
                closure = a[-1] if name == "optimizer_step" else None

                def inner():
                    out = closure()
                    fire()
                    return out

                return original(*a[:-1], inner, **k)
            out = original(*a, **k)
            if when == "after":
                fire()
            return out

        setattr(owner, name, wrapped)

    if target == "torch.save":
        import torch

        wrap(torch, "save")
    elif target in ("evaluate", "calibrate", "record"):
        from dsn.workflows import stage as stage_module

        wrap(stage_module, target)
    else:
        from dsn.systems.finetune import FinetuneSystem
        from dsn.systems.pretrain import PretrainSystem

        wrap({"pretrain": PretrainSystem, "finetune": FinetuneSystem}[stage], target)


def _main(argv: list[str]) -> int:
    moment, rest = argv[0], argv[argv.index("--") + 1:]
    if moment != "none":
        _install(moment)
    from dsn.cli import main

    return main(["fit", *rest])


# ----------------------------------------------------------------------------- the tests
def _fit(home: Path, data: Path, cache: Path, experiment: str, moment: str = "none", *extra: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}
    args = [*TINY, "--data.data_dir", str(data), "--data.cache_dir", str(cache), "--tracking.home", str(home),
            "--tracking.experiment", experiment, *extra]
    return subprocess.run([sys.executable, __file__, moment, "--", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _figures(home: Path, experiment: str) -> tuple[dict, dict]:
    """The selected/* figures of each stage's last run and the status of every run of ``experiment``."""
    import mlflow

    from dsn import tracking

    c = mlflow.MlflowClient(tracking.tracking_uri(None, home))
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id])
    figures = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        if r.info.run_name in ("pretrain", "finetune") and r.info.status == "FINISHED":
            figures[r.info.run_name] = {k: v for k, v in r.data.metrics.items() if k.startswith("selected/")}
    return figures, {r.info.run_id: (r.info.run_name, r.info.status) for r in runs}


@pytest.fixture(scope="module")
def reference(synth_dir, _tracking_template, tmp_path_factory):
    """``reference(stages)``: the figures of an uninterrupted fit of those stages (computed once), with the
    tracking home and cache that every case of this module shares."""
    import shutil

    home = tmp_path_factory.mktemp("interrupt-home")
    shutil.copy(_tracking_template, home / "mlflow.db")
    cache = tmp_path_factory.mktemp("interrupt-cache")
    done: dict[str, dict] = {}

    def get(stages: str = BOTH):
        if stages not in done:
            fit = _fit(home, synth_dir, cache, f"reference-{stages}", "none", "--stages", stages)
            assert fit.returncode == 0, fit.stderr[-3000:]
            figures, _ = _figures(home, f"reference-{stages}")
            assert set(figures) == set(stages.strip("[]").split(", ")) and all(figures.values())
            done[stages] = figures
        return done[stages], home, cache

    return get


BOTH = "[pretrain, finetune]"


def _interrupt_and_resume(reference, synth_dir, experiment: str, moment: str, stages: str = BOTH) -> str:
    ref, home, cache = reference(stages)
    code = 130 if "-int:" in moment else 143
    stopped = _fit(home, synth_dir, cache, experiment, moment, "--stages", stages)
    assert stopped.returncode == code, f"{moment}: exit {stopped.returncode}\n{stopped.stderr[-3000:]}"
    _, status = _figures(home, experiment)
    assert not {s for _, s in status.values()} & {"RUNNING", "FAILED"}, status
    resumed = _fit(home, synth_dir, cache, experiment, "none", "--stages", stages, "--resume", "last")
    assert resumed.returncode == 0, f"{moment}: resume exit {resumed.returncode}\n{resumed.stderr[-3000:]}"
    figures, status = _figures(home, experiment)
    assert {s for _, s in status.values()} <= {"FINISHED", "KILLED"}, status
    assert [s for name, s in status.values() if name not in ("pretrain", "finetune")] == ["FINISHED"], status
    assert figures == ref, f"{moment}: the resumed fit's figures differ from the uninterrupted fit's"
    return stopped.stderr + resumed.stderr


def test_sigterm_inside_a_finetune_optimizer_step_resumes_with_the_same_figures(reference, synth_dir):
    """Issue 30: SIGTERM inside Adam's step used to leave a state without ``exp_avg_sq`` and a resume that failed."""
    log = _interrupt_and_resume(reference, synth_dir, "sigterm-finetune", "finetune:optimizer_step:inside:3", BOTH)
    assert "SIGTERM received: stopping before training batch" in log and "exp_avg_sq" not in log


def test_a_damaged_last_ckpt_is_named_and_the_stage_restarts(reference, synth_dir):
    import torch

    ref, home, cache = reference(BOTH)
    stopped = _fit(home, synth_dir, cache, "damaged", "finetune:optimizer_step:after:2")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    # the home is shared with this module's other cases: the stopped fit's state is the newest one
    last = max((home / "checkpoints").rglob("finetune/last.ckpt"), key=lambda p: p.stat().st_mtime)
    ck = torch.load(last, weights_only=False)
    state = ck["optimizer_states"][0]["state"]
    del state[next(iter(state))]["exp_avg_sq"]  # what a signal inside Adam's step used to leave
    torch.save(ck, last)
    resumed = _fit(home, synth_dir, cache, "damaged", "none", "--resume", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = [ln for ln in resumed.stderr.splitlines() if "is damaged" in ln]
    assert len(lines) == 1 and str(last) in lines[0] and "lacks exp_avg_sq" in lines[0] and "restarting" in lines[0]
    assert not last.exists() and last.with_name("last.ckpt.damaged").is_file()
    figures, status = _figures(home, "damaged")
    assert figures == ref and {s for _, s in status.values()} <= {"FINISHED", "KILLED"}


def test_samplers_resume_inside_an_epoch():
    """A resumed fit's training sampler gives the rest of the epoch in the uninterrupted order, once."""
    import numpy as np

    from dsn.data.recording import Recording
    from dsn.data.sampling import BalancedSampler, ShardedSampler, StreamBatchSampler

    rng = np.random.default_rng(0)
    recs = [Recording(f"r{i}", f"s{i}", 1, rng.normal(size=(40, 1, 30)).astype("float32"), rng.integers(0, 5, 40), 1.0)
            for i in range(3)]
    samplers = [BalancedSampler(rng.integers(0, 5, 50), seed=1, max_shift=3), ShardedSampler(50, seed=1, max_skip=2),
                StreamBatchSampler(recs, batch_size=2, seq_len=5, seed=1, skip_first=2)]
    for sampler in samplers:
        sampler.set_epoch(3)
        whole = list(sampler)
        sampler.resume_at(3, 7)
        assert list(sampler) == whole[7:] and list(sampler) == whole  # the skip is used once
        sampler.resume_at(3, 7)
        sampler.set_epoch(4)
        assert len(list(sampler)) == len(whole)  # another epoch: no skip


PRE, FT = "[pretrain]", "[finetune]"
#: (moment, stages): 3 training batches x 2 epochs of pretraining, 4 x 2 of fine-tuning; with the two fast tests
#: above, 22 moments
MOMENTS = [
    *((f"pretrain:optimizer_step:{w}:3", PRE) for w in ("before", "inside", "after")),
    ("pretrain:optimizer_step:inside:1", PRE),  # the first step: Adam's state is created inside it
    ("pretrain:training_step:before-int:4", PRE),  # Ctrl-C
    ("pretrain:validation_step:before:1", PRE),
    ("pretrain:optimizer_step:after:6", PRE),  # the stage's last step: it restarts from its start
    ("torch.save:before:2", PRE),  # while the best checkpoint is written
    ("evaluate:before:1", PRE),  # after training
    *((f"finetune:optimizer_step:{w}:5", FT) for w in ("before", "inside", "after")),
    ("finetune:training_step:before-int:6", FT),
    ("finetune:validation_step:before:3", FT),
    ("finetune:on_train_epoch_end:after:1", FT),
    ("torch.save:before:3", FT),
    ("calibrate:before:1", FT),
    ("finetune:optimizer_step:inside:7", BOTH),
    ("finetune:validation_step:before:40", BOTH),  # the last validation: fine-tuning restarts after a finished pretraining
    ("record:before:2", BOTH),
]


@pytest.mark.slow
@pytest.mark.parametrize(("moment", "stages"), MOMENTS)
def test_a_signal_at_any_moment_resumes_with_the_same_figures(reference, synth_dir, moment, stages):
    _interrupt_and_resume(reference, synth_dir, moment.replace(":", "-") + ("-both" if stages == BOTH else ""), moment, stages)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
