"""Everything MLflow: tracking URI, experiments, parent/child runs, artifacts, figures, models.

No other module imports ``mlflow`` (except through the functions here), so a change of tracking
backend (remote server, registry) happens in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dsn.errors import DsnError, LegacyModelError, ModelError, Pruned
from dsn.tags import KIND_TAG
from dsn.utils import flatten
from dsn.utils import json_default as _json_default

DEFAULT_HOME = "mlruns"
DEFAULT_EXPERIMENT = "dsn"
PARENT_TAG = "mlflow.parentRunId"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
_log = logging.getLogger(__name__)


class TrackingError(DsnError, RuntimeError):
    """The tracking server or store cannot be used; the message says which and how to fix it."""


def tracking_uri(uri: str | None = None, home: str | Path = DEFAULT_HOME) -> str:
    """The tracking URI: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<home>/mlflow.db``."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def artifact_root(uri: str, home: str | Path = DEFAULT_HOME) -> str | None:
    """Artifact location for new experiments: ``<home>/artifacts`` for a local store, server default otherwise."""
    if uri.startswith("sqlite:") or uri.startswith("file:"):
        return (Path(home).resolve() / "artifacts").as_uri()
    return None


def local_store(uri: str) -> Path | None:
    """The database file of a local ``sqlite:///PATH`` tracking URI; None for any other store."""
    from urllib.parse import unquote

    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(uri[len("sqlite:///"):].split("?")[0])  # SQLAlchemy: sqlite:///rel.db, sqlite:////abs.db
    return None if path in ("", ":memory:") else Path(path)


def check_writable_store(uri: str) -> None:
    """Fail at once, before any run is created, when a local tracking store cannot be written: an existing
    database that is read-only, or a read-only folder (SQLite writes its journal beside the database, and a
    new database there could never be created). Nothing is checked for a server's store.

    Raises
    ------
    TrackingError
        Naming the path and the fix.
    """
    db = local_store(uri)
    if db is None:
        return
    fix = ("give a writable tracking home (--tracking.home DIR, or --tracking.uri sqlite:///DIR/mlflow.db), "
           "or make it writable")
    folder = next((p for p in (db.parent, *db.parent.parents) if p.exists()), Path("/"))
    if db.exists() and not os.access(db, os.W_OK):
        raise TrackingError(f"tracking store {db} is read-only: dsn cannot record runs or models in it; {fix}.")
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        raise TrackingError(f"tracking store {db}: the folder {folder} is read-only (SQLite writes its journal "
                            f"there{'' if db.exists() else ' and creates the database there'}); {fix}.")


def reading_uri(uri: str | None = None, home: str | Path = DEFAULT_HOME) -> str:
    """The tracking URI of a command that only reads the store (:func:`tracking_uri`), which never creates
    one: neither the tracking home nor a new database.

    Raises
    ------
    TrackingError
        When the local store does not exist (naming its path and how to point at one).
    """
    if not uri and not os.environ.get("MLFLOW_TRACKING_URI") and not Path(home).is_dir():
        raise TrackingError(f"no tracking store at {Path(home).resolve() / 'mlflow.db'}: nothing to read. Point "
                            "--tracking.home at the folder `dsn fit` tracked into, or --tracking.uri at its store.")
    uri = tracking_uri(uri, home)
    db = local_store(uri)
    if db is not None and not db.is_file():
        raise TrackingError(f"no tracking store at {db.absolute()}: nothing to read (and none is created). Point "
                            "--tracking.home at the folder `dsn fit` tracked into, or --tracking.uri at its store.")
    return uri


def check_tracking(uri: str, timeout: float = 5.0, write: bool = True) -> None:
    """Fail fast (before training) when the tracking store cannot be reached, or (``write``) cannot be written
    (:func:`check_writable_store`). A command that only reads gets its URI from :func:`reading_uri`.

    Raises
    ------
    TrackingError
        Naming the URI and how to fix it.
    """
    import mlflow

    if write:
        check_writable_store(uri)
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:
        raise TrackingError(
            f"MLflow tracking store {uri} is not reachable ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Start the server, fix `tracking.uri` / $MLFLOW_TRACKING_URI, or unset it to use the local "
            "store sqlite:///mlruns/mlflow.db."
        ) from None
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def find_experiment_id(uri: str, name: str) -> str | None:
    """The id of experiment ``name``, or None when the store has none of that name (nothing is created)."""
    exp = client(uri).get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else None


def recent_experiment_id(uri: str, name: str | None = None) -> str | None:
    """The experiment ``dsn ui`` links to: ``name``'s, else the one updated last (MLflow's Default one aside);
    None when there is none or the store cannot be read (the link then opens the UI's front page)."""
    try:
        if name:
            return find_experiment_id(uri, name)
        exps = [e for e in client(uri).search_experiments() if e.experiment_id != "0"]
        return max(exps, key=lambda e: e.last_update_time or 0).experiment_id if exps else None
    except Exception:  # noqa: BLE001 - only a link: MLflow raises several kinds for a store it cannot read
        return None


def experiment_id(uri: str, name: str = DEFAULT_EXPERIMENT, home: str | Path = DEFAULT_HOME) -> str:
    """Get or create an experiment; local artifacts go under the tracking home."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=artifact_root(uri, home))


def ui_url(port: int, exp_id: str | None = None, host: str = "127.0.0.1") -> str:
    """Link to the runs table ("Model training" view) of an experiment in the MLflow 3 UI."""
    base = f"http://{host}:{port}/"
    return f"{base}#/experiments/{exp_id}?workflowType=machine_learning" if exp_id else base


def compare_url(run_ids: list[str], exp_ids: list[str], base: str = "http://127.0.0.1:5000/") -> str:
    """Link to the MLflow 3 UI's side-by-side comparison of ``run_ids`` (parallel coordinates, scatter and
    contour plots of their params against their metrics): ``<base>#/compare-runs?runs=[...]&experiments=[...]``
    with the JSON lists URL-encoded. ``base``: the UI's address (a tracking server's URI, or `dsn ui`'s)."""
    from urllib.parse import quote

    runs = quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    exps = quote(json.dumps(list(dict.fromkeys(exp_ids)), separators=(",", ":")), safe="")
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={exps}"


# ----------------------------------------------------------------------------- runs
class Terminated(BaseException):
    """Raised from SIGTERM so that runs are closed as KILLED (like Ctrl-C)."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block SIGTERM raises :class:`Terminated` in the main thread (so ``finally`` clauses and
    :func:`run_guard` close what is open); the previous handler comes back afterwards. Outside the main
    thread (where Python cannot install handlers) nothing changes."""
    previous = None
    if hasattr(signal, "SIGTERM"):
        with contextlib.suppress(ValueError):  # not in the main thread

            def _raise(signum, frame):
                raise Terminated()

            previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def run_guard(uri: str, run_ids: list[str]) -> Iterator[None]:
    """Close every run in ``run_ids`` as FINISHED on success, KILLED on Ctrl-C / SIGTERM / a pruner
    (:class:`~dsn.errors.Pruned`) and FAILED on an error, so no run is left RUNNING forever. ``run_ids`` may
    change inside the block: add a run when it opens, remove it once it has been closed for good. A run
    that cannot be closed (the store is gone) is named in a warning of the ``dsn.tracking`` logger."""
    status = "FINISHED"
    try:
        with sigterm_raises():
            yield
    except (KeyboardInterrupt, Terminated, Pruned):
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        c = client(uri)
        for rid in reversed(run_ids):
            try:
                c.set_terminated(rid, status)
            except Exception as e:
                _log.warning("could not close MLflow run %s as %s (%s: %s): it may show RUNNING", rid, status,
                             type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")


def start_run(uri: str, exp_id: str, name: str | None = None, parent: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """Create a run (a child of ``parent`` when given) and return its id."""
    tags = dict(tags or {})
    if parent:
        tags[PARENT_TAG] = parent
    if name:
        tags["mlflow.runName"] = name
    return client(uri).create_run(exp_id, tags=tags, run_name=name).info.run_id


def start_top_run(uri: str, exp_id: str, kind: str, name: str, cfg=None, tags: Mapping[str, Any] | None = None,
                  params: Mapping[str, Any] | None = None, parent: str | None = None) -> str:
    """Open the run of one dsn command and return its id: the one place such a run is created.

    ``dsn fit`` (also each fold of a cv and each trial of a sweep, under ``parent``), ``dsn cv``, ``dsn sweep``
    and ``dsn evaluate`` open their run here: named ``name``, tagged ``dsn.kind=<kind>``, with the environment
    tags (:func:`environment_tags`: git commit, Python and package versions) and ``tags``.

    Parameters
    ----------
    cfg : jsonargparse.Namespace, optional
        A training config: logged as the ``config.yaml`` artifact, its training items as params
        (:func:`dsn.config.training_items`).
    params : mapping, optional
        More params (flattened as :func:`log_params` does).

    A run whose config or params cannot be logged is closed as FAILED before the error goes on.
    """
    run_id = start_run(uri, exp_id, name, parent=parent, tags={KIND_TAG: kind, **environment_tags(), **(tags or {})})
    try:
        items = dict(params or {})
        if cfg is not None:
            from dsn import config

            log_text(uri, run_id, config.dump(cfg), "config.yaml")
            items = {**config.training_items(cfg), **items}
        if items:
            log_params(uri, run_id, items)
    except BaseException:
        with contextlib.suppress(Exception):
            set_terminated(uri, run_id, "FAILED")
        raise
    return run_id


def set_terminated(uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status)


def reopen_run(uri: str, run_id: str) -> None:
    """Mark a run RUNNING again (``--resume``)."""
    client(uri).update_run(run_id, status="RUNNING")


def find_child(uri: str, parent: str, name: str) -> Any | None:
    """The child run ``name`` of ``parent`` (most recent), or None."""
    c = client(uri)
    exp = c.get_run(parent).info.experiment_id
    runs = c.search_runs(
        [exp], filter_string=f"tags.`{PARENT_TAG}` = '{parent}' and tags.`mlflow.runName` = '{name}'", max_results=1
    )
    return runs[0] if runs else None


def latest_run(uri: str, exp_id: str, kind: str = "fit", parent: str | None = None) -> Any | None:
    """The most recent run tagged ``dsn.kind=<kind>`` of an experiment (a child of ``parent`` when given)."""
    flt = _tag_filter({KIND_TAG: kind}, parent)
    runs = client(uri).search_runs([exp_id], filter_string=flt, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def _tag_filter(tags: Mapping[str, str], parent: str | None = None) -> str:
    """MLflow's filter string for runs with all of ``tags`` (children of ``parent`` when given)."""
    parts = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if parent:
        parts.append(f"tags.`{PARENT_TAG}` = '{parent}'")
    return " and ".join(parts)


def find_runs(uri: str, exp_id: str, tags: Mapping[str, str], parent: str | None = None) -> list:
    """Runs of an experiment with all of ``tags`` (children of ``parent`` when given), newest first."""
    return list(client(uri).search_runs([exp_id], filter_string=_tag_filter(tags, parent), max_results=5000,
                                        order_by=["attributes.start_time DESC"]))


def find_tagged_runs(uri: str, tags: Mapping[str, str], experiment: str | None = None, max_results: int = 1) -> list:
    """Runs with all of ``tags`` in the experiment named ``experiment``, else in any experiment of the store
    (at most ``max_results``); empty when there is none (or no such experiment)."""
    c = client(uri)
    exps = [c.get_experiment_by_name(experiment)] if experiment else c.search_experiments()
    ids = [e.experiment_id for e in exps if e is not None]
    return list(c.search_runs(ids, filter_string=_tag_filter(tags), max_results=max_results)) if ids else []


def read_text_artifact(uri: str, run_id: str, path: str) -> str | None:
    """The text of a run's artifact, or None when it does not exist."""
    try:
        local = download_artifacts(uri, run_id, path)
    except Exception:
        return None
    return Path(local).read_text()


def get_run(uri: str, run_id: str):
    return client(uri).get_run(run_id)


def lightning_logger(uri: str, run_id: str):
    """An ``MLFlowLogger`` that logs into an existing run."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(tracking_uri=uri, run_id=run_id, log_model=False)


# ----------------------------------------------------------------------------- logging helpers
def log_params(uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log flattened params (values cut to MLflow's 6000-character limit); already-set keys are skipped."""
    from mlflow.entities import Param

    c = client(uri)
    existing = c.get_run(run_id).data.params
    items = [Param(k[:250], str(v)[:6000]) for k, v in flatten(params).items() if k[:250] not in existing]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i : i + 100])


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    c = client(uri)
    for k, v in metrics.items():
        c.log_metric(run_id, k, float(v), step=step or 0)  # NaN is stored as NaN


def set_tags(uri: str, run_id: str, tags: Mapping[str, Any]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    client(uri).log_text(run_id, text, artifact_file)


def log_dict(uri: str, run_id: str, data: Any, artifact_file: str) -> None:
    client(uri).log_text(run_id, json.dumps(data, indent=2, default=_json_default), artifact_file)


def log_figure(uri: str, run_id: str, figure, artifact_file: str) -> None:
    """Log a matplotlib figure (made without pyplot, as :mod:`dsn.plots` does: nothing to close)."""
    client(uri).log_figure(run_id, figure, artifact_file)
    figure.clear()


def log_file(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client(uri).log_artifact(run_id, str(path), artifact_path)


def environment_tags() -> dict[str, str]:
    """Git commit, Python and package versions (logged as tags of the parent run)."""
    from importlib.metadata import PackageNotFoundError, version

    tags = {"python": sys.version.split()[0]}
    for pkg in ("dsn", "torch", "lightning", "torchmetrics", "mlflow", "mne", "optuna", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            tags[f"version.{pkg}"] = version(pkg)
    with contextlib.suppress(Exception):
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
            tags["git.dirty"] = str(bool(dirty.stdout.strip()))
    return tags


def log_evaluation(
    uri: str,
    run_id: str,
    split: str,
    metrics: Mapping[str, float],
    confusion: np.ndarray | None,
    hypnogram: tuple[str, np.ndarray, np.ndarray] | None = None,
    step: int | None = None,
) -> None:
    """Log a split's final metrics, confusion matrix (JSON + count and row-normalised figures)
    and a true-vs-predicted hypnogram of one recording."""
    from dsn import plots
    from dsn.data.labels import STAGES

    log_metrics(uri, run_id, metrics, step)
    if confusion is not None:
        log_dict(uri, run_id, {"labels": list(STAGES), "rows": "true", "cols": "predicted", "matrix": confusion}, f"{split}/confusion_matrix.json")
        for norm in (False, True):
            fig = plots.confusion_matrix_figure(confusion, normalize=norm, title=f"{split} confusion matrix" + (" (row-normalised)" if norm else ""))
            log_figure(uri, run_id, fig, f"{split}/confusion_matrix{'_normalized' if norm else ''}.png")
    if hypnogram is not None:
        name, y_true, y_pred = hypnogram
        fig = plots.hypnogram_figure(y_true, y_pred, title=f"{name} ({split}): expert vs model")
        log_figure(uri, run_id, fig, f"{split}/hypnogram_{name}.png")


# ----------------------------------------------------------------------------- models
def pip_requirements() -> list[str]:
    """The packages a logged model needs, pinned to the versions it was trained with."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "numpy", "dsn"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            out.append(pkg)
    return out


@contextlib.contextmanager
def preserve_global_uri() -> Iterator[None]:
    """Restore MLflow's global tracking URI and ``MLFLOW_TRACKING_URI`` after the block.

    Lightning's ``MLFlowLogger`` calls ``mlflow.set_tracking_uri``, which in MLflow 3 also sets the
    environment variable; without this, a fit would redirect every later command of the same process
    (a Python session, a test run) to its own store."""
    import mlflow

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    prev = mlflow.get_tracking_uri() if env_before is None else env_before
    try:
        yield
    finally:
        mlflow.set_tracking_uri(prev)
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """Point MLflow's global (fluent) API at ``uri`` for a block, then restore it (see :func:`preserve_global_uri`)."""
    import mlflow

    with preserve_global_uri():
        mlflow.set_tracking_uri(uri)
        yield


def model_signature(scorer):
    """The pyfunc signature: ``(n_epochs, n_chans, n_times)`` float32 epochs in, ``stage`` + one
    probability column per class + the night's ``trust_verdict`` and ``trust_reasons`` out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    fn = scorer.feature_net
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, int(fn.n_chans), int(fn.n_times)))])
    outputs = Schema([ColSpec("string", "stage"), *(ColSpec("double", c) for c in scorer.class_names),
                      ColSpec("string", "trust_verdict"), ColSpec("string", "trust_reasons")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_model(uri: str, run_id: str | None, model, input_example: np.ndarray, name: str = "model",
              metadata: dict[str, Any] | None = None) -> str:
    """Log a :class:`~dsn.models.scoring.SleepScorer` as an MLflow pyfunc model holding a dsn artifact.

    The model's ``artifacts/dsn_model/`` folder is :func:`dsn.artifact.write_artifact`'s (JSON spec +
    weights; what dsn itself loads, unpickling nothing); the pyfunc wrapper is :mod:`dsn.mlflow_model`,
    logged from code. ``input_example`` is a night's epochs ``(n_epochs, n_chans, n_times)`` (a
    ``(1, seq_len, n_chans, n_times)`` sequence is taken as its epochs); it is stored with the declared
    signature. ``pip_requirements`` is given so MLflow does not spend seconds inferring them.
    Returns the model URI (``models:/<model_id>``).
    """
    import warnings

    import mlflow

    from dsn.artifact import MLFLOW_KEY, write_artifact

    example = np.asarray(input_example, dtype=np.float32)
    if example.ndim == 4:
        example = example.reshape(-1, *example.shape[2:])
    example = example[:2]  # MLflow scores the example while logging: keep that short
    was_training = model.training
    model.eval()
    try:
        with tempfile.TemporaryDirectory(prefix="dsn-model-") as tmp, _global_uri(uri), warnings.catch_warnings():
            folder = write_artifact(model, Path(tmp) / MLFLOW_KEY)
            warnings.simplefilter("ignore")  # MLflow's notes on type hints and example conversion
            ctx = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None) if run_id else contextlib.nullcontext()
            with ctx:
                info = mlflow.pyfunc.log_model(
                    name=name,
                    python_model=str(Path(__file__).with_name("mlflow_model.py")),
                    artifacts={MLFLOW_KEY: str(folder)},
                    signature=model_signature(model),
                    input_example=example,
                    pip_requirements=pip_requirements(),
                    metadata=json.loads(json.dumps(metadata or model.spec(), default=_json_default)),
                )
    finally:
        model.train(was_training)
    return info.model_uri


def _local_model_dir(model_uri: str) -> Path | None:
    """The folder of a ``models:/`` model in a local artifact store (read in place), else None."""
    from urllib.parse import unquote, urlparse

    try:
        from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository

        underlying = ModelsArtifactRepository.get_underlying_uri(model_uri)
    except Exception:
        return None
    parsed = urlparse(underlying)
    if parsed.scheme not in ("file", ""):
        return None
    path = Path(unquote(parsed.path))
    return path if (path / "MLmodel").is_file() else None


def download_model(model_uri: str, tracking: str | None = None, dst: str | Path | None = None) -> Path:
    """A logged model's files (``models:/...``, ``runs:/...``): downloaded to ``dst`` (a new temporary folder),
    or, without ``dst``, the model's own folder when the artifact store is local (nothing copied)."""
    import mlflow

    if dst is None and model_uri.startswith("models:/"):
        with _global_uri(tracking_uri(tracking)):
            local = _local_model_dir(model_uri)
        if local is not None:
            return local
    dst = Path(dst or tempfile.mkdtemp(prefix="dsn-model-"))
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # no progress bars on a few small files
    try:
        with _global_uri(tracking_uri(tracking)):
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def load_model(model_uri: str, tracking: str | None = None):
    """Load the :class:`~dsn.models.scoring.SleepScorer` of a model logged with :func:`log_model`
    (``runs:/...``, ``models:/...``): download its files and read its artifact folder (nothing unpickled).

    Raises
    ------
    LegacyModelError
        For a model logged by an older dsn as a pickled PyTorch model (the message says how to convert it).
    ModelError
        For a model that is not a dsn model, or a damaged or newer-format one.
    """
    import yaml

    from dsn.artifact import MLFLOW_KEY, is_artifact, read_artifact

    local = download_model(model_uri, tracking)
    folder = local / "artifacts" / MLFLOW_KEY
    if is_artifact(folder):
        return read_artifact(folder, source=model_uri)
    flavors = {}
    if (local / "MLmodel").is_file():
        flavors = (yaml.safe_load((local / "MLmodel").read_text()) or {}).get("flavors") or {}
    if "pytorch" in flavors:
        raise LegacyModelError(
            f"model {model_uri}: stored by an older dsn as a pickled PyTorch model, which dsn no longer loads "
            f"(unpickling runs code from the file); convert it once with `dsn registry upgrade {model_uri}`."
        )
    raise ModelError(f"model {model_uri}: not a dsn model (no {MLFLOW_KEY} folder; flavors: "
                     f"{', '.join(flavors) or 'none'}). Point at a model logged by `dsn fit`.")


def load_pickled_model(model_uri: str, tracking: str | None = None):
    """Unpickle a model logged by dsn before the artifact format (``mlflow.pytorch``, pickle format).

    This runs code stored in the model: only :func:`dsn.workflows.registry.upgrade` calls it, on the
    user's explicit request, to convert such a model once.
    """
    import warnings

    import mlflow

    with _global_uri(tracking_uri(tracking)), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mlflow.pytorch.load_model(model_uri, map_location="cpu")


def download_artifacts(uri: str, run_id: str, path: str, dst: str | Path | None = None) -> str:
    import mlflow

    dst = dst or tempfile.mkdtemp(prefix="dsn-")
    return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=uri)


# ----------------------------------------------------------------------------- model registry
def register_model(uri: str, model_uri: str, name: str, tags: Mapping[str, Any] | None = None) -> str:
    """Register a logged model as a new version of ``name`` (created when needed); returns the version."""
    import logging

    c = client(uri)
    with contextlib.suppress(Exception):
        c.create_registered_model(name, description="DeepSleepNet sleep-stage scorers logged by dsn")
    run_id = model_id = None
    if model_uri.startswith("runs:/"):
        run_id = model_uri.split("/")[1]
    elif model_uri.startswith("models:/m-"):  # a logged model: a tracking server requires its id with the source
        model_id = model_uri[len("models:/"):].split("/")[0]
    logging.getLogger("mlflow.store.model_registry").setLevel(logging.ERROR)
    with _global_uri(uri):  # MLflow resolves a models:/m-<id> source through the global tracking URI
        mv = c.create_model_version(name, model_uri, run_id=run_id, tags={k: str(v) for k, v in (tags or {}).items()},
                                    model_id=model_id)
    return str(mv.version)


def registered_models(uri: str) -> list:
    return list(client(uri).search_registered_models())


def model_versions(uri: str, name: str) -> list:
    return sorted(client(uri).search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def model_version(uri: str, name: str, version: str | None = None, alias: str | None = None):
    c = client(uri)
    return c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, str(version))


def set_alias(uri: str, name: str, version: str, alias: str) -> None:
    client(uri).set_registered_model_alias(name, alias, str(version))
