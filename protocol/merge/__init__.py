"""Merge rules: how a peer combines its model with models it received.

A rule is a pure function of the local model and the received ones. Which
tensors take part is decided here, once: floating-point tensors are merged;
integer tensors (counters such as BatchNorm's ``num_batches_tracked``) stay local.

Rules, by registry name (``make_rule(name)`` builds each with its defaults):

- ``mean``: plain average, every model counts the same (``averaging``).
- ``weighted``: average weighted by sample count and age (FedAvg's weights, with stale
  models discounted: ``age_discount``) (``averaging``).
- ``vc``, ``vc-self``, ``vc-blend``: variance-corrected averaging ("Vanishing Variance
  Problem in Fully Decentralized Neural-Network Systems", Tian et al. 2024) (``variance``).
- ``clip``, ``clip-vc``, ``median``, ``trimmed``, ``bristle``, ``bristle-vc``: robust rules
  for swarms with hostile peers (``robust``; the loss check ``bristle`` can add is in
  ``loss_check``). ``median`` and ``trimmed`` want several received models per merge
  (``merge_batch(rule)``, collected by ``batch.PendingModels``); the recommended robust
  default is ``RECOMMENDED_ROBUST``.

What every rule shares — ``Contribution``, ``MergeReport``, the ``MergeRule`` and
``RobustRule`` interfaces, the registry — is in ``base``. Every merge — in the daemon
(``peer.runtime.defence``) and in the simulator — goes through ``merge_received_report``, so both
produce bit-identical weights for the same inputs.

This module only re-exports; the modules of the package import each other by their full
path, never from here.
"""

from __future__ import annotations

# Importing the rule modules registers their rules; ``RULES`` keeps the order they were
# registered in: averaging, variance (robust imports it first), robust.
from protocol.merge.averaging import (
    MERGE_CHUNK,
    MeanRule,
    WeightedRule,
    age_discount,
    contribution_weights,
    toward,
    weighted_average,
)
from protocol.merge.base import (
    DEFAULT_BETA,
    DEFAULT_DECAY,
    RULES,
    Contribution,
    Judgement,
    MergeReport,
    MergeRule,
    RobustRule,
    SnapshotJudge,
    Tensors,
    Validator,
    Verdict,
    VerdictKind,
    combine_received_report,
    is_mergeable,
    make_rule,
    merge_batch,
    merge_received_report,
    merge_report,
    register,
)
from protocol.merge.batch import PendingModels
from protocol.merge.history import NormHistory
from protocol.merge.loss_check import LossCheck, LossCheckedRule
from protocol.merge.robust import (
    RECOMMENDED_ROBUST,
    BetaMeanRule,
    BristleRule,
    BristleVCRule,
    ClipRule,
    ClipVCRule,
    CoordinateMedianRule,
    TrimmedMeanRule,
    clip_toward,
    delta_norm,
    model_norm,
    trimmed_count,
)
from protocol.merge.variance import (
    DEFAULT_EPS,
    Target,
    VarianceCorrectedBlendRule,
    VarianceCorrectedRule,
    VarianceCorrectedSelfRule,
    is_variance_corrected,
    received_share,
    rescale_to_variance,
    target_variance,
    variance,
    vc_mixing_weights,
)

__all__ = [
    "DEFAULT_BETA", "DEFAULT_DECAY", "DEFAULT_EPS", "MERGE_CHUNK", "RECOMMENDED_ROBUST", "RULES",
    "BetaMeanRule", "BristleRule", "BristleVCRule", "ClipRule", "ClipVCRule", "Contribution",
    "CoordinateMedianRule", "Judgement", "LossCheck", "LossCheckedRule", "MeanRule", "MergeReport", "MergeRule",
    "NormHistory", "PendingModels", "RobustRule", "SnapshotJudge", "Target", "Tensors", "TrimmedMeanRule", "Validator",
    "VarianceCorrectedBlendRule", "VarianceCorrectedRule", "VarianceCorrectedSelfRule", "Verdict",
    "VerdictKind", "WeightedRule", "age_discount", "clip_toward", "combine_received_report", "contribution_weights", "delta_norm",
    "is_mergeable", "is_variance_corrected", "make_rule", "merge_batch", "merge_received_report",
    "merge_report", "model_norm", "received_share", "register", "rescale_to_variance", "target_variance", "toward",
    "trimmed_count", "variance", "vc_mixing_weights", "weighted_average",
]
