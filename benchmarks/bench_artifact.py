"""Model artifact: size and load time of the old pickled MLflow model against the current format.

    python benchmarks/bench_artifact.py              # paper-size network (about 1 minute)
    python benchmarks/bench_artifact.py --repeats 5

One process, one fresh tracking store. The same paper-size sequence scorer (DeepSleepNet defaults, the
official BiLSTM) is logged twice: as dsn logged models before the artifact format (``mlflow.pytorch``,
``serialization_format="pickle"``) and as today's ``tracking.log_model`` (a pyfunc model holding
``dsn_model.json`` + ``weights.pt``). Measured for each: the logged model's files (bytes), the time to log it,
and the time to load it back from its registry reference (old: ``mlflow.pytorch.load_model``, unpickling;
new: ``registry.load_scorer``, spec + ``torch.load(weights_only=True)``, and ``mlflow.pyfunc.load_model``).
Both loads include copying the model's files out of the artifact store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_median, machine_lines, print_table, timed  # noqa: E402

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="loads per format (default 3)")
    a = p.parse_args(argv)
    import mlflow
    import numpy as np
    import torch

    from dsn import tracking
    from dsn.models import DeepFeatureNet, DeepSleepNet
    from dsn.models.scoring import SleepScorer
    from dsn.workflows.registry import load_scorer

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    pre = {"channel": "EEG Fpz-Cz", "sfreq": 100.0, "epoch_sec": 30.0, "trim_minutes": 30.0, "unscored": "drop",
           "normalize": "none"}
    scorer = SleepScorer(DeepSleepNet(DeepFeatureNet()), pre, {"net": {}, "finetune_net": {}}).eval()
    n_params = sum(t.numel() for t in scorer.parameters())
    x = (np.random.default_rng(0).standard_normal((2, 1, 3000)) * 20).astype(np.float32)
    home = Path(tempfile.mkdtemp(prefix="bench-artifact-"))
    uri = f"sqlite:///{home / 'mlflow.db'}"
    exp = tracking.experiment_id(uri, "bench-artifact", home)

    def log_pickled():
        run = tracking.start_run(uri, exp, "pickled")
        with tracking._global_uri(uri), mlflow.start_run(run_id=run):
            info = mlflow.pytorch.log_model(scorer, name="model", pip_requirements=tracking.pip_requirements(),
                                            serialization_format="pickle", input_example=x[None])
        return info.model_uri

    def log_current():
        run = tracking.start_run(uri, exp, "current")
        return tracking.log_model(uri, run, scorer, x)

    tracking.log_model(uri, tracking.start_run(uri, exp, "warm-up"), scorer, x)  # imports, first-call costs
    t_old, old_uri = timed(log_pickled)
    t_new, new_uri = timed(log_current)
    tracking.register_model(uri, old_uri, "pickled")
    tracking.register_model(uri, new_uri, "current")
    size_old = _size(tracking.download_model("models:/pickled/1", uri))
    size_new = _size(tracking.download_model("models:/current/1", uri))
    weights = _size(tracking.download_model("models:/current/1", uri) / "artifacts")

    def load_old():
        return tracking.load_pickled_model("models:/pickled/1", uri)

    def load_pyfunc():
        with tracking._global_uri(uri):
            return mlflow.pyfunc.load_model("models:/current/1")

    loads = {}
    for name, fn in [("pickled: mlflow.pytorch.load_model", load_old),
                     ("current: registry.load_scorer", lambda: load_scorer("models:/current/1", uri)),
                     ("current: mlflow.pyfunc.load_model", load_pyfunc)]:
        fn()  # warm
        loads[name] = best_median([timed(fn)[0] for _ in range(a.repeats)])
    same = np.allclose(load_old().predict_proba(x), load_scorer("models:/current/1", uri).predict_proba(x), atol=0)

    print("\n".join(machine_lines()))
    print(f"network: DeepSleepNet paper size, {n_params / 1e6:.1f} M parameters; same probabilities: {same}")
    print_table(["format", "logged model (MB)", "log (s)"], [
        ["pickled mlflow.pytorch (before)", f"{size_old / 1e6:.1f}", f"{t_old:.2f}"],
        ["pyfunc + dsn_model.json/weights.pt (now)", f"{size_new / 1e6:.1f} (artifact {weights / 1e6:.1f})", f"{t_new:.2f}"],
    ], title="size and logging time")
    print_table(["load", "best (s)", "median (s)"], [[k, f"{b:.3f}", f"{m:.3f}"] for k, (b, m) in loads.items()],
                title=f"load time from the registry ({a.repeats} loads each, after one warm-up)")
    b_old, b_new = loads["pickled: mlflow.pytorch.load_model"][0], loads["current: registry.load_scorer"][0]
    print(f"\nsize now / before: {size_new / size_old:.2f}; load now / before: {b_new / b_old:.2f}")


if __name__ == "__main__":
    main()
