"""Should this hypnogram be trusted? Detectors on the scored night and one verdict (issue 34).

* :mod:`dsn.trust.plausibility`: the predicted hypnogram against adult normative ranges
  (:file:`norms.yaml`, overridable by a user file);
* :mod:`dsn.trust.shift`: the night's predicted-stage distribution against the model's validation nights
  (black-box shift detection);
* :mod:`dsn.trust.features`: the night's epoch-encoder features against the training nights' (per-stage
  Gaussians with a tied covariance: a Mahalanobis distance);
* :mod:`dsn.trust.verdict`: ``trusted`` / ``check`` / ``do not use`` with the reasons behind it.

Pure functions on arrays: no model, no file besides the norms. Imports only numpy, PyYAML (lazily),
:mod:`dsn.errors` and :mod:`dsn.data.labels`.
"""

from dsn.trust.features import FeatureShiftResult, check_features, fit_feature_reference
from dsn.trust.plausibility import RuleResult, check_night, load_norms, night_values
from dsn.trust.shift import ShiftResult, check_shift, fit_reference, shift_score
from dsn.trust.verdict import Verdict, combine

__all__ = ["FeatureShiftResult", "RuleResult", "ShiftResult", "Verdict", "check_features", "check_night", "check_shift",
           "combine", "fit_feature_reference", "fit_reference", "load_norms", "night_values", "shift_score"]
