"""The MLflow pyfunc face of a dsn model (logged "from code" by :func:`dsn.tracking.log_model`).

MLflow copies this file into the logged model and runs it when the model is loaded with
``mlflow.pyfunc.load_model`` or served with ``mlflow models serve``; it rebuilds the scorer from the
model's artifact folder (:mod:`dsn.artifact`: JSON spec + weights, nothing unpickled).
``predict`` takes a night's 30-s epochs ``(n_epochs, n_chans, n_times)`` in µV, in recording order, and
returns one row per epoch: ``stage`` and one probability column per class, normalised and streamed
exactly as ``dsn predict`` does (:func:`dsn.workflows.predict.scaled_proba`), then the night's verdict
(``trust_verdict``: trusted / check / do not use, ``trust_reasons``; :func:`dsn.workflows.trust.scorer_verdict`),
the same on every row of the request.

Do not import this module: it registers its model with MLflow when run.
"""

from __future__ import annotations

import warnings

import mlflow
import numpy as np

from dsn.artifact import MLFLOW_KEY


def _checked_input(model_input, scorer) -> np.ndarray:
    """The input as float32 epochs, refused with ``INVALID_PARAMETER_VALUE`` (a served model answers HTTP 400
    with the message) when it is not numbers of the model's shape, or holds an impossible signal
    (:mod:`dsn.data.sanity`: NaN/Inf, a flat or saturated channel)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    from dsn.data.sanity import check_signals

    fn = scorer.feature_net
    want = f"(n_epochs, {int(fn.n_chans)}, {int(fn.n_times)}) epochs in µV"
    try:
        x = np.asarray(model_input, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise MlflowException(f"model input: not numbers ({e}); send {want}.", INVALID_PARAMETER_VALUE) from None
    if x.ndim != 3 or x.shape[1:] != (int(fn.n_chans), int(fn.n_times)):
        raise MlflowException(f"model input of shape {x.shape}: send {want}.", INVALID_PARAMETER_VALUE)
    chans = scorer.preprocessing.get("channels") or [scorer.preprocessing.get("channel") or "channel 1"]
    problems = check_signals(x, chans)
    if problems:
        raise MlflowException("model input: " + "; ".join(f"{p.channel}: {p.describe()}" for p in problems)
                              + f"; no sleep stage can be read from it. Send {want} with signal on every channel.",
                              INVALID_PARAMETER_VALUE)
    return x


with warnings.catch_warnings():  # MLflow asks for type hints; the declared signature describes the input
    warnings.simplefilter("ignore", UserWarning)

    class SleepScorerModel(mlflow.pyfunc.PythonModel):
        """A :class:`~dsn.models.scoring.SleepScorer` as an MLflow pyfunc model."""

        def load_context(self, context) -> None:
            from dsn.artifact import read_artifact

            self.scorer = read_artifact(context.artifacts[MLFLOW_KEY], source="pyfunc model")

        def predict(self, context, model_input, params=None):
            """Stage and class probabilities of every epoch of a night.

            ``model_input``: ``(n_epochs, n_chans, n_times)`` epochs in µV (array or nested lists). Returns a
            DataFrame with ``stage``, one ``float`` column per class name and the night's ``trust_verdict`` and
            ``trust_reasons`` (the same on every row), one row per epoch.
            """
            import pandas as pd

            from dsn.workflows.predict import scaled_proba
            from dsn.workflows.trust import scorer_verdict

            x = _checked_input(model_input, self.scorer)
            proba, x_in, period = scaled_proba(self.scorer, x, "model input", return_input=True)
            names = self.scorer.class_names
            stages = proba.argmax(-1)
            out = pd.DataFrame(proba.astype(np.float64), columns=names)
            out.insert(0, "stage", [names[i] for i in stages] if len(proba) else [])
            verdict = scorer_verdict(self.scorer, stages, x_in, period)
            out["trust_verdict"] = verdict.verdict
            out["trust_reasons"] = "; ".join(verdict.reasons)
            return out


mlflow.models.set_model(SleepScorerModel())
