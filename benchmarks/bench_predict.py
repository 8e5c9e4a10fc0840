"""Inference: one 22-hour recording from EDF file to written hypnogram with `dsn predict`'s code path.

    python benchmarks/bench_predict.py              # one 22-h synthetic night, the paper-size network
    python benchmarks/bench_predict.py --hours 8
    python benchmarks/bench_predict.py --config conf/recommended.yaml   # two passes (normalisation), 5 offsets
    python benchmarks/bench_predict.py --model mlruns/checkpoints/RUN/finetune/selected.ckpt   # a trained model

Breaks the time into read (EDF -> epochs, resampling included), model (the sequence model streamed over the
night with its LSTM state carried, chunks of seq_len epochs) and write (CSV, EDF+, PNG, summary JSON), and
compares the model part with a bare forward pass of the same network over the same night (one call, the
whole night as one sequence, no chunking) measured in the same run. The weights are random unless --model: the
timing of a normalised model depends on the sleep period its first pass finds (see the printed line).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_lines, print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=22.0, help="recording length (default 22 h, Sleep-EDF's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (best and median shown)")
    ap.add_argument("--config", default="conf/paper.yaml", help="network config (default conf/paper.yaml)")
    ap.add_argument("--model", default=None, help="a trained model (any reference dsn predict takes, e.g. a "
                    "selected.ckpt) instead of random weights: the sleep period a normalised model finds, and so "
                    "the work of its final pass, depends on its weights")
    ap.add_argument("--tracking-uri", default=None, help="tracking URI for a models:/ or runs:/ --model")
    a = ap.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.chdir(ROOT)
    import numpy as np
    import torch

    from dsn import config
    from dsn.data.synth import write_dataset
    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.models.scoring import SleepScorer
    from dsn.workflows.predict import score_recording

    for line in machine_lines():
        print(line)
    tmp = Path(tempfile.mkdtemp(prefix="dsn-bench-predict-"))
    t = time.perf_counter()
    write_dataset(tmp / "data", subjects=1, hours=a.hours, seed=0, progress=False)
    print(f"wrote a {a.hours:g}-h synthetic recording in {time.perf_counter() - t:.1f} s")
    psg = next((tmp / "data").glob("*-PSG.edf"))
    (next((tmp / "data").glob("*-Hypnogram.edf"))).unlink()  # a night with no hypnogram, as users have

    if a.model:
        from dsn.workflows.registry import load_scorer

        scorer = load_scorer(a.model, a.tracking_uri).eval()
        net, prep, a.config = scorer.net, scorer.preprocessing, a.model
    else:
        d = config.to_dict(config.load_config([a.config]))
        net = DeepSleepNet(DeepFeatureNet(**d["net"]), **d["finetune"]["net"])
        prep = {k: d["data"][k] for k in ("channels", "channel_aliases", "sfreq", "epoch_sec", "trim_minutes",
                                          "unscored", "normalize")}
        scorer = SleepScorer(net, prep, {"net": d["net"], "finetune_net": d["finetune"]["net"]},
                             seq_len=d["finetune"]["seq_len"], n_offsets=d["finetune"]["n_offsets"]).eval()
    # normalisation: a first pass (CNN + one streaming) finds the sleep period, then the final pass scores it
    normalised = prep.get("normalize", "none") != "none"
    passes = scorer.n_offsets + (1 if normalised else 0)  # LSTM streamings per night

    from dsn.data.normalize import normalize
    from dsn.data.psg import read_epochs
    from dsn.models.scoring import CPU_BATCH, _offset_rows

    # the parts below read the epochs as the first pass does: normalised (a normalised model fed raw microvolts
    # saturates its LSTM, which says nothing of its speed on the nights it scores)
    x = torch.from_numpy(normalize(np.array(read_epochs(psg).x), prep.get("normalize", "none"), scorer.sfreq))
    bs = CPU_BATCH
    n_off = scorer.n_offsets
    offsets = [round(k * scorer.seq_len / n_off) for k in range(n_off)]

    def timed(fn) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            fn()
        return time.perf_counter() - t

    def one_by_one(feats):  # the offsets streamed one after the other (the code before the rows of one batch)
        fwd = None
        for o in offsets:
            _, fwd = scorer._official_stream(net, feats, scorer.chunk_bounds(len(feats), o), fwd)

    official = net.bidirectional_mode == "official" and scorer.carry_state and n_off > 1
    runs, bare, parts = [], [], {"cnn": [], "rows": [], "one_by_one": []}
    for i in range(a.repeats):  # interleaved, so that a change of the machine's load hits every path alike
        out = tmp / f"out{i}"
        out.mkdir()
        s = score_recording(scorer, psg, out)
        runs.append(s["timings"])
        bare.append(timed(lambda: torch.softmax(net(x[None]), -1)))
        if official:
            with torch.inference_mode():
                feats = torch.cat([net.feature_net(x[j : j + bs]) for j in range(0, len(x), bs)])
            parts["cnn"].append(timed(lambda: torch.cat([net.feature_net(x[j : j + bs]) for j in range(0, len(x), bs)])))
            parts["rows"].append(timed(lambda f=feats: _offset_rows(net, f, offsets, scorer.seq_len)))
            parts["one_by_one"].append(timed(lambda f=feats: one_by_one(f)))
    n_epochs = s["n_epochs"]

    def stat(key):
        v = sorted(r[key] for r in runs)
        return v[0], v[len(v) // 2]

    rows = []
    total = [sum(r.values()) for r in runs]
    for key, label in (("read_s", "read (EDF -> epochs)"), ("model_s", "model (streamed, state carried)"), ("write_s", "write (CSV, EDF+, PNG, JSON)")):
        b, m = stat(key)
        rows.append([label, f"{b:.3f}", f"{m:.3f}"])
    rows.append(["total", f"{min(total):.3f}", f"{sorted(total)[len(total) // 2]:.3f}"])
    rows.append(["bare forward pass (one call)", f"{min(bare):.3f}", f"{sorted(bare)[len(bare) // 2]:.3f}"])
    for key, label in (("cnn", f"  part: CNN over the night (one pass, batches of {bs})"),
                       ("rows", f"  part: LSTM, {n_off} offsets as rows of one batch"),
                       ("one_by_one", f"  part: LSTM, {n_off} offsets one after the other (before)")):
        if parts[key]:
            v = sorted(parts[key])
            rows.append([label, f"{v[0]:.3f}", f"{v[len(v) // 2]:.3f}"])
    print_table(["step", "best s", "median s"], rows,
                title=f"dsn predict, {a.hours:g}-h recording ({n_epochs} epochs), {a.config} network, torch threads {torch.get_num_threads()}")
    ratio = stat("model_s")[0] / min(bare)
    if normalised:
        per = s["scored_period"]
        how = ("the whole night: the first pass's CNN, forward LSTM and streaming reused, the other offsets added"
               if per["n_epochs"] == n_epochs else
               f"epochs {per['first_epoch']}-{per['first_epoch'] + per['n_epochs'] - 1} "
               f"({per['n_epochs'] / n_epochs:.0%} of the night) normalised by themselves, CNN + {scorer.n_offsets} offsets")
        print(f"\nmodel part / bare forward pass: {ratio:.2f}x (target <= 1.5x). A first pass over the whole night "
              f"(CNN + one streaming, about one bare forward pass) finds the sleep period; the final pass scored {how}.")
    else:
        how = (f"{scorer.n_offsets} chunk offsets as rows of one batch" if scorer.n_offsets > 1 else
               "one streaming, each LSTM stack one call over its reading order")
        print(f"\nmodel part / bare forward pass: {ratio:.2f}x (target <= {'1.5' if passes > 1 else '1.2'}x; {how})")
    if parts["rows"]:
        print(f"LSTM part, offsets as rows / one after the other: {min(parts['rows']) / min(parts['one_by_one']):.2f}x; "
              f"CNN pass / bare forward pass: {min(parts['cnn']) / min(bare):.2f}x")
    print(f"epochs per second end to end: {n_epochs / min(total):.0f}")


if __name__ == "__main__":
    main()
