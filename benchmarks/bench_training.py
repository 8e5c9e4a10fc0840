"""Benchmark: training throughput through Lightning against a bare PyTorch loop, loader speed, FLOP/s.

    python benchmarks/bench_training.py                  # a minute or two on 2 CPU cores
    python benchmarks/bench_training.py --full           # more steps and repeats, a larger data set
    python benchmarks/bench_training.py --device cuda    # on a GPU

For both stages, in the same run and on the same batches:

* **Lightning**: ``lightning.Trainer.fit`` of the real system (``PretrainSystem(DeepFeatureNet())``, batch
  100; ``FinetuneSystem(DeepSleepNet(DeepFeatureNet()))``, 10 sequences x 25 epochs, streamed with the
  LSTM state carried) with the real ``SleepEDFDataModule`` on synthetic data; no progress bar, logger,
  checkpointing or validation. A callback times the steady state (after warm-up steps): loading the
  batch, the step, the system's metrics and logging, gradient clipping, the optimizer.
* **bare loop**: the same model and optimizer (the system's own ``configure_optimizers``) over the same
  batches, preloaded: forward, loss, backward, (fine-tuning: clip at norm 10, carry the LSTM state), step.
* **loader only**: iterating the train dataloader without a model.
* **FLOPs**: one forward + backward counted with ``torch.utils.flop_counter.FlopCounterMode``, against
  the machine's float32 matmul throughput (a large ``torch.mm``).

Target (issue 14): Lightning + data loading overhead <= 10 % of the bare loop; the loader never the bottleneck.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NOISE_NOTE, default_data_dir, machine_lines, print_table  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def n_epochs_in(batch) -> int:
    """30-s epochs in a batch (labels: (batch,) or (batch, seq_len))."""
    return int(batch[1].numel())


def matmul_flops(device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """Measured float32 matmul FLOP/s (best of ``reps``)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# ------------------------------------------------------------------------------------------ systems and steps
#: Network sizes: the paper's (default) or a tiny one for --smoke (checks the script, measures nothing).
SIZES = {
    "paper": ({}, {}),
    "tiny": ({"n_filters_first": 8, "n_filters": 8}, {"hidden_size": 16, "shortcut_size": 32}),
}


def make_system(stage: str, seed: int, size: str = "paper"):
    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.systems import FinetuneSystem, PretrainSystem

    cnn, seq = SIZES[size]
    torch.manual_seed(seed)
    if stage == "pretrain":
        return PretrainSystem(DeepFeatureNet(**cnn))
    return FinetuneSystem(DeepSleepNet(DeepFeatureNet(**cnn), **seq))


def make_datamodule(
    stage: str, data_dir: Path, cache_dir: Path, batch_size: int, seq_len: int, num_workers: int, n_subjects: int, pin_memory: bool = False,
    device_batches: bool = False,
):
    from dsn.data.datamodule import SleepEDFDataModule

    dm = SleepEDFDataModule(
        data_dir=str(data_dir),
        n_folds=n_subjects,
        fold=0,
        n_val_subjects=1,
        mode=stage,
        batch_size=batch_size,
        seq_len=seq_len,
        cache_dir=str(cache_dir),
        num_workers=num_workers,
        pin_memory=pin_memory,
        device_batches=device_batches,
        progress=False,
        seed=0,
    )
    dm.setup()
    return dm


def loader_batches(dm, n: int, keep: bool = True):
    """The first ``n`` training batches, over as many epochs as needed (the order Lightning sees).

    Returns the batches (``keep``) and the seconds spent iterating after the first batch."""
    out, k, epoch, t0 = [], 0, 0, None
    while k < n:
        loader = dm.train_dataloader()
        sampler = getattr(loader, "batch_sampler", None)
        for s in (sampler, getattr(sampler, "sampler", None), getattr(loader, "sampler", None)):
            if hasattr(s, "set_epoch"):
                s.set_epoch(epoch)
        for batch in loader:
            if keep:
                out.append(batch)
            k += 1
            if t0 is None:
                t0 = time.perf_counter()
            if k == n:
                break
        epoch += 1
    return out, time.perf_counter() - t0


class StepTimer:
    """Lightning callback: the time at the end of the last warm-up step and of the last step (the device
    synchronised only there, so the host can run ahead as usual), and the epochs in each batch."""

    def __new__(cls, device, warmup: int, total: int):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self):
                self.marks: list[float] = []
                self.sizes: list[int] = []

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                self.sizes.append(n_epochs_in(batch))
                if len(self.sizes) in (warmup, total):
                    sync(device)
                    self.marks.append(time.perf_counter())

        return _Timer()


class Preloaded:
    """Batches already in memory (on the device), as one iterable Lightning can train on."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def run_lightning(
    stage: str, dm, warmup: int, steps: int, device: torch.device, size: str = "paper", batches=None, bare_system: bool = False,
    profile: bool = False,
) -> tuple[float, int, float, dict]:
    """Steady-state seconds per step and epochs per step through ``Trainer.fit``, the whole fit() wall time,
    and (``profile``, CUDA) the host-device synchronisations per step, by the source line that caused them.

    Variants that attribute the overhead: ``batches`` (preloaded on the device) replaces the data module's
    loader; ``bare_system`` removes the system's per-step metrics and logging (``_step_end``/``_epoch_end``).
    """
    import lightning as L

    system = make_system(stage, seed=0, size=size)
    if bare_system:
        system._step_end = lambda *args, **kwargs: None
        system._epoch_end = lambda *args, **kwargs: None
    timer = StepTimer(device, warmup, warmup + steps)
    trainer = L.Trainer(
        max_steps=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        callbacks=[timer],
    )
    if batches is not None:
        batches = Preloaded(batches)
    syncs: dict = {}
    t = time.perf_counter()
    if profile and device.type == "cuda":
        # Every host-device synchronisation warns, from the Python line that caused it.
        import collections
        import warnings

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                trainer.fit(system, train_dataloaders=batches) if batches is not None else trainer.fit(system, datamodule=dm)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        where = collections.Counter(
            f"{Path(w.filename).parent.name}/{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
        )
        syncs = {k: v / (warmup + steps) for k, v in where.most_common()}
    elif batches is not None:
        trainer.fit(system, train_dataloaders=batches)
    else:
        trainer.fit(system, datamodule=dm)
    fit_wall = time.perf_counter() - t
    sec = (timer.marks[1] - timer.marks[0]) / steps
    return sec, sum(timer.sizes[warmup:]) // steps, fit_wall, syncs


def bare_step_fn(stage: str, system, device: torch.device):
    """A plain PyTorch training step for the system's network and optimizer."""
    from dsn.data.labels import IGNORE_INDEX

    opt = system.configure_optimizers()
    clip = getattr(system.hparams, "grad_clip_norm", None) if stage == "finetune" else None
    net = system.model if stage == "pretrain" else system.net
    net.to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    state = [None]

    def loss_of(batch):
        if stage == "pretrain":
            x, y = batch
            logits = net(x)
        else:
            x, y, first = batch
            s = state[0]
            if s is None or s[0].shape[1] != x.shape[0]:
                s = None
            else:  # rows starting a new stream get a zero state (no `first.all()` test: it would sync a GPU)
                s = net.mask_state(s, ~first)
            logits, new_state = net(x, s, return_state=True)
            state[0] = net.detach_state(new_state)
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE_INDEX
        )

    def step(batch):
        loss = loss_of(batch)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, loss_of


def run_bare(stage: str, batches, warmup: int, device: torch.device, size: str = "paper") -> float:
    system = make_system(stage, seed=0, size=size)
    step, _ = bare_step_fn(stage, system, device)
    for b in batches[:warmup]:
        step(b)
    sync(device)
    t = time.perf_counter()
    for b in batches[warmup:]:
        step(b)
    sync(device)
    return (time.perf_counter() - t) / (len(batches) - warmup)


def counter_sees_lstm(device: torch.device) -> bool:
    """Whether FlopCounterMode counts nn.LSTM here (not on CPU: oneDNN's fused RNN op is invisible to it)."""
    from torch.utils.flop_counter import FlopCounterMode

    lstm = torch.nn.LSTM(8, 8, batch_first=True).to(device)
    with FlopCounterMode(display=False) as counter:
        lstm(torch.randn(2, 3, 8, device=device))[0].sum().backward()
    return counter.get_total_flops() > 0


def count_flops(stage: str, batch, device: torch.device, size: str = "paper") -> int:
    """FLOPs of one forward + backward (optimizer excluded).

    LSTMs the counter cannot see are added analytically: per step and direction ``2 * 4H * (I + H)``
    multiply-adds forward, twice that backward (gradients of the input and of the weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    system = make_system(stage, seed=0, size=size)
    _, loss_of = bare_step_fn(stage, system, device)
    extra = [0]

    def lstm_hook(module, inputs, output):
        x = inputs[0]
        n_steps = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
        dirs = 2 if module.bidirectional else 1
        h = module.hidden_size
        for layer in range(module.num_layers):
            i = module.input_size if layer == 0 else h * dirs
            extra[0] += 3 * dirs * 2 * 4 * h * (i + h) * n_steps

    hooks = []
    if not counter_sees_lstm(device):
        hooks = [m.register_forward_hook(lstm_hook) for m in system.modules() if isinstance(m, torch.nn.LSTM)]
    with FlopCounterMode(display=False) as counter:
        loss_of(batch).backward()
    for h in hooks:
        h.remove()
    return int(counter.get_total_flops()) + extra[0]


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None, help="folder for the synthetic data set (written once, reused)")
    p.add_argument("--subjects", type=int, default=None, help="synthetic subjects, one 8-h night each (default 6; --full 10)")
    p.add_argument("--hours", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default: pretrain 12, finetune 6; x3 with --full)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3)")
    p.add_argument("--repeats", type=int, default=None, help="Lightning / bare runs, interleaved (default 3; --full 5)")
    p.add_argument("--stages", nargs="+", default=["pretrain", "finetune"], choices=["pretrain", "finetune"])
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0, as conf/demo.yaml)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--full", action="store_true")
    p.add_argument("--breakdown", action="store_true", help="also time Lightning on preloaded batches, with and without the "
                   "system's metrics/logging, and count host-device syncs per step (torch profiler)")
    p.add_argument("--device-batches", action="store_true", help="Lightning fit with data.device_batches: the training "
                   "recordings on the device, batches gathered there (the 'loader only' column then times that gather, "
                   "on the CPU)")
    p.add_argument("--smoke", action="store_true", help="a tiny run (small batches, 2 steps) that checks the script works")
    a = p.parse_args(argv)

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    size = "tiny" if a.smoke else "paper"
    subjects = a.subjects or (10 if a.full else 3 if a.smoke else 6)
    hours = 0.25 if a.smoke else a.hours
    repeats = a.repeats or (1 if a.smoke else 5 if a.full else 3)
    warmup = a.warmup or (1 if a.smoke else 3)
    batch = {"pretrain": (16, 1), "finetune": (4, 5)} if a.smoke else {"pretrain": (100, 1), "finetune": (10, 25)}
    steps = {
        s: a.steps or (1 if a.smoke else {"pretrain": 12, "finetune": 6}[s] * (3 if a.full else 1)) for s in a.stages
    }

    print("bench_training: Lightning fit vs bare PyTorch loop")
    for line in machine_lines(a.device):
        print("  " + line)
    tmp = Path(tempfile.mkdtemp(prefix="dsn-bench-train-"))
    data_dir = a.data or (tmp / "data" if a.smoke else default_data_dir(f"train-{subjects}x{hours:g}h"))
    try:
        from dsn.data.synth import write_dataset

        marker = data_dir / "bench-train-dataset"
        if not marker.exists():
            print(f"  writing {subjects} synthetic subjects x {hours:g} h to {data_dir} ...", flush=True)
            write_dataset(data_dir, subjects=subjects, hours=hours, seed=0, progress=False)
            marker.write_text("ok")
        print(f"  data: {data_dir} ({subjects} subjects x {hours:g} h; train on {subjects - 2}, streamed as in dsn fit)")
        print(f"  DataLoader workers: {a.num_workers}; timed steps after {warmup} warm-up steps; {repeats} interleaved repeats"
              + ("; Lightning fit with data.device_batches" if a.device_batches else ""))

        rows, flop_rows, notes, breakdown = [], [], [], []
        mm_n = 512 if a.smoke else 2048
        peak = matmul_flops(device, n=mm_n)
        for stage in a.stages:
            bs, seq_len = batch[stage]
            n_steps = steps[stage]
            dm = make_datamodule(stage, data_dir, tmp / "cache", bs, seq_len, a.num_workers, subjects, device.type == "cuda",
                                 a.device_batches)
            batches, _ = loader_batches(dm, warmup + n_steps)
            batches = [tuple(t.to(device) for t in b) for b in batches]
            per_step = sum(n_epochs_in(b) for b in batches[warmup:]) / n_steps

            loader_sec = []
            light, light_wall, bare, pre, pre_bare = [], [], [], [], []
            for _ in range(repeats):
                loader_sec.append(loader_batches(dm, warmup + n_steps + 1, keep=False)[1] / (warmup + n_steps))
                sec, _, wall, _ = run_lightning(stage, dm, warmup, n_steps, device, size)
                light.append(sec)
                light_wall.append(wall)
                bare.append(run_bare(stage, batches, warmup, device, size))
                if a.breakdown:
                    pre.append(run_lightning(stage, dm, warmup, n_steps, device, size, batches=batches)[0])
                    pre_bare.append(run_lightning(stage, dm, warmup, n_steps, device, size, batches=batches, bare_system=True)[0])
            flops = count_flops(stage, batches[0], device, size)
            n_first = n_epochs_in(batches[0])

            lb, lm = min(light), statistics.median(light)
            bb, bm = min(bare), statistics.median(bare)
            ld = min(loader_sec)
            label = f"{stage} ({bs} x {seq_len})" if stage == "finetune" else f"{stage} (batch {bs})"
            rows.append(
                [
                    label,
                    f"{per_step / bb:.0f}",
                    f"{per_step / lb:.0f}",
                    f"{(lb - bb) / bb:+.1%}",
                    f"{(lm - bm) / bm:+.1%}",
                    f"{per_step / ld:.0f}",
                    f"{ld / lb:.1%}",
                ]
            )
            flop_rows.append(
                [
                    label,
                    f"{flops / 1e9:.2f}",
                    f"{flops / n_first / 1e6:.0f}",
                    f"{flops / n_first * per_step / bb / 1e9:.1f}",
                    f"{flops / n_first * per_step / bb / peak:.0%}",
                ]
            )
            notes.append(f"{stage}: fit() wall time incl. setup {min(light_wall):.1f} s for {warmup + n_steps} steps")
            if a.breakdown:
                sync_txt = "- (CPU)"
                if device.type == "cuda":
                    syncs = run_lightning(stage, dm, warmup, n_steps, device, size, profile=True)[3]
                    sync_txt = f"{sum(syncs.values()):.1f}: " + ", ".join(f"{k} x{v:.1f}" for k, v in list(syncs.items())[:6])
                pb, ppb = min(pre), min(pre_bare)
                breakdown.append(
                    [
                        label,
                        f"{bb * 1e3:.1f}",
                        f"{ppb * 1e3:.1f} ({(ppb - bb) / bb:+.0%})",
                        f"{pb * 1e3:.1f} ({(pb - bb) / bb:+.0%})",
                        f"{lb * 1e3:.1f} ({(lb - bb) / bb:+.0%})",
                        sync_txt,
                    ]
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{NOISE_NOTE}")
    print_table(
        [
            "stage",
            "bare loop (epochs/s)",
            "Lightning fit (epochs/s)",
            "overhead (best)",
            "overhead (median)",
            "loader only (epochs/s)",
            "loader time / step",
        ],
        rows,
        title=f"Training throughput on {device.type} (30-s epochs per second, best of {repeats}; target overhead <= 10 %)",
    )
    print_table(
        ["stage", "GFLOP / step (fwd+bwd)", "MFLOP / epoch", "achieved GFLOP/s (bare)", "of matmul peak"],
        flop_rows + [[f"float32 matmul ({mm_n}x{mm_n}, measured)", "", "", f"{peak / 1e9:.0f}", "100%"]],
        title="FLOPs of one step (torch.utils.flop_counter; LSTMs analytically where it cannot see them; optimizer not counted)",
    )
    for n in notes:
        print("  " + n)
    if breakdown:
        print_table(
            [
                "stage",
                "bare loop",
                "+ Lightning loop (preloaded batches, no metrics/logging)",
                "+ system metrics and logging",
                "+ data module loader (= Lightning fit)",
                "host-device syncs per step (where)",
            ],
            breakdown,
            title="Where the overhead goes: ms per step, best of the repeats (each column adds one part)",
        )


if __name__ == "__main__":
    main()
