"""The names of the MLflow tags dsn sets on its runs and model versions, defined once.

Every module that sets or searches a ``dsn.*`` tag imports its name from here (through :mod:`dsn.tracking`
or directly), so a tag is spelt the same by the code that writes it and the code that looks for it.
"""

from __future__ import annotations

#: What a run is: ``fit``, ``fold``, ``trial``, ``cv``, ``sweep``, ``evaluate``.
KIND_TAG = "dsn.kind"
#: A stage run's stage (``pretrain``, ``finetune``).
STAGE_TAG = "dsn.stage"
#: The model a stage run (and a fit run, for its final stage) logged.
MODEL_URI_TAG = "dsn.model_uri"
#: The weight-relevant config keys a resumed fit changed (``--allow_config_change``).
CONFIG_CHANGED_TAG = "dsn.config_changed_on_resume"
#: A stage run whose params no longer hold after a config change on resume.
SUPERSEDED_TAG = "dsn.superseded"
#: The starting weights of a fit (``--init``).
INIT_TAG = "dsn.init"

#: A cv run's identity (config and number of folds), and its number of folds.
CV_KEY_TAG = "dsn.cv_key"
FOLDS_TAG = "dsn.folds"
#: A fold run's fold.
FOLD_TAG = "dsn.fold"

#: A sweep's study, a trial's number and state, and why it was pruned or failed.
STUDY_TAG = "dsn.study"
TRIAL_TAG = "dsn.trial"
TRIAL_STATE_TAG = "dsn.trial_state"
PRUNED_REASON_TAG = "dsn.pruned_reason"
ERROR_TAG = "dsn.error"
#: The baseline trial, a probe trial, a trial retried after its process died.
BASELINE_TAG = "dsn.baseline"
PROBE_TAG = "dsn.probe"
RETRY_OF_TAG = "dsn.retry_of"
#: A study run's link to its trials side by side.
COMPARE_URL_TAG = "dsn.compare_url"

#: An evaluate run's data set, and whether another derivation stood in for a model channel.
DATASET_TAG = "dsn.dataset"
CROSS_MONTAGE_TAG = "dsn.cross_montage"

#: A model version rewritten by ``dsn registry upgrade``: the version it was converted from.
UPGRADED_FROM_TAG = "dsn.upgraded_from"
