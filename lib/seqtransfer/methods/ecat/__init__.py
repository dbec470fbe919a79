"""ECAT: entire-space continual and adaptive transfer (Taobao, arXiv 2407.02542, SIGIR 2024).

The question: a small target domain (a "mini-app") lives inside an entire space that shares its
users and items. Which entire-space samples should the target model learn from, how much should
it copy from a model trained on everything, and does that keep helping as new data arrives?

What comes from the paper (its abstract; no code is public): sample transfer in two stages,
coarse to fine (a graph-guided selection, then a selection by domain adaptation), adaptive
knowledge distillation from an entire-space model, and continual retraining. **Every formula
below is ours** [ours], each kept configurable in :class:`EcatConfig`:

* **Coarse selection** (:func:`interaction_graph`, :func:`ppr`, :func:`khop`,
  :func:`coarse_select`): a user-item bipartite graph of the entire space's training
  interactions (plus item-item *bridge* edges between items of two datasets with the same title,
  when given); personalised PageRank from the target's items (restart 0.15, 20 power
  iterations, scipy sparse), or k-hop reachability; candidates = entire-space samples (a prefix
  and its next item) whose next item is among the top-M scored source items.
* **Fine selection** (:func:`domain_classifier`, :func:`importance_weights`): a class-balanced
  logistic domain classifier (target samples = 1, candidates = 0) on the frozen entire-space
  teacher's hidden state at each sample (its context in the entire space); candidates with
  ``p >= p_min`` (0.2) are kept with weight ``w = p / (1 - p)``, clipped at ``clip`` (10) and
  then normalised to mean 1. **The positive class** is the entire-space positions whose next
  item is a target item (the target's behaviour as the entire space records it), not the
  student's own target windows: the classifier reads the teacher's hidden state over an
  entire-space context, and a target-only window (the mini-app's subsequence) is a different
  kind of context, so a classifier trained on those would separate contexts by how they were
  cut, not by domain, and score nearly every candidate p ~ 0. With the entire-space positive
  class both classes are contexts of the same kind and differ only in the domain of the item
  that follows. METHODS.md also scales by ``|candidates| / |target|``; that is the
  ``count_scale`` option, off by default because class balancing already makes ``p / (1 - p)``
  the density ratio, and the extra factor (tens on ML-1M) sends most weights to the clip.
  Option: a gradient-reversal domain head on the student instead (``fine="grl"``).
* **Adaptive distillation** (:func:`adaptive_alpha`, :func:`ecat_loss`): per sample
  ``alpha = sg(p_t(y) / (p_t(y) + p_s(y)))`` with p the softmax probability of the true next
  item under the teacher (t) and the student (s); loss per sample
  ``w * CE + lambda * alpha * ||P h_s - h_t||^2 / D`` averaged over the samples of a batch (P a
  learned linear map, identity at start; the distance per dimension, so lambda does not depend
  on the hidden size D). Options: constant alpha, or a learned gate that
  predicts from (h_s, h_t) whether the teacher is the better one (trained by its own BCE term,
  used under stop-gradient). The teacher is frozen while a student reads it, so ``h_t`` and
  ``p_t(y)`` are computed once per period over the student's pool (:func:`student.teacher_outputs`,
  ``teacher_outputs="period"``) instead of in every step (``"step"``): the same values up to float
  rounding, a fifth less time a step (``seqtransfer bench --ecat-student``).
* **Continual** (:func:`continual`): ``n_periods`` chronological periods (quantiles of the
  entire space's training timestamps); in period t the teacher and the student continue from
  where period t-1 ended, trained on everything up to the period's end, and the selection is
  re-run on the graph so far.

Data layout [ours]: teacher and student share the entire space's item ids; the student's
target data are the target users' target-domain subsequences (the issue's mini-app), and it
ranks only target items (:class:`TargetScored` masks the other columns at evaluation). No
leakage: every interaction of a target user at or after their target validation item is
removed from the entire space before anything (graph, teacher, candidates) is built.

Baselines and ablations are presets of the same :func:`fit` (:data:`VARIANTS`): target-only,
joint (target + every source sample, unweighted), pre-train on the entire space then fine-tune,
and ECAT without graph, without domain adaptation, without distillation, with constant alpha,
in one period.

On the engine (:func:`runs`): every period's teacher is a run of its own on the entire space up
to that period's end, continuing from the previous period's teacher through the inputs
mechanism, early-stopping on its own validation; every variant is a run built on the teachers it
reads, with the setting (:mod:`seqtransfer.entire`) as a constant. The package is split by job:
:mod:`.config` (options, variants), :mod:`.selection` (coarse and fine sample selection),
:mod:`.student` (distillation, the student's step), :mod:`.periods` (teachers, the continual
student, the runs), :mod:`.verdicts` (what 06 reads off the runs).
"""

from __future__ import annotations

from .config import (ABLATIONS, BASELINES, DISTILLS, FINES, GRAPHS, INITS, ONE_PERIOD_TEACHERS, PERIOD_MINUTES,
                     VARIANTS, EcatConfig, check)
from .periods import (continual, fit, needs_teacher, period_cuts, period_train, runs, selection_key, teacher,
                      teacher_config, teacher_data, teacher_name, train_teachers, truncate)
from .selection import (auc, coarse_select, domain_classifier, importance_weights, interaction_graph,
                        item_scores, khop, ppr, select)
from .student import TargetScored, adaptive_alpha, ecat_loss, grad_reverse, student_hooks, true_prob
from .verdicts import (ecat_against, negative_transfer, selection_values, teacher_sentence, teacher_stops,
                       verdict_table)

__all__ = [
    "ABLATIONS", "BASELINES", "DISTILLS", "FINES", "GRAPHS", "INITS", "ONE_PERIOD_TEACHERS", "PERIOD_MINUTES",
    "VARIANTS", "EcatConfig", "check", "continual", "fit", "needs_teacher", "period_cuts", "period_train", "runs",
    "selection_key", "teacher", "teacher_config", "teacher_data", "teacher_name", "train_teachers", "truncate",
    "auc", "coarse_select", "domain_classifier", "importance_weights", "interaction_graph", "item_scores", "khop",
    "ppr", "select", "TargetScored", "adaptive_alpha", "ecat_loss", "grad_reverse", "student_hooks", "true_prob",
    "ecat_against", "negative_transfer", "selection_values", "teacher_sentence", "teacher_stops", "verdict_table",
]
