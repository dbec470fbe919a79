"""ECAT's configuration: every option of :class:`EcatConfig`, the variants as config changes
(:data:`VARIANTS`), and :func:`check`."""
from __future__ import annotations

from dataclasses import dataclass, field

from ...train import TrainConfig

GRAPHS = ("ppr", "khop", "none")
FINES = ("classifier", "grl", "none")
DISTILLS = ("adaptive", "constant", "gate", "none")
INITS = ("scratch", "teacher")
ONE_PERIOD_TEACHERS = ("continual", "own")
PERIOD_MINUTES = ("remaining", "split")
TEACHER_OUTPUTS = ("period", "step")


@dataclass
class EcatConfig:
    backbone: str = "sasrec"               # teacher and student backbone (same architecture)
    backbone_kwargs: dict = field(default_factory=dict)   # overrides of the backbone's config
    train: TrainConfig = field(default_factory=TrainConfig)          # student, per period
    teacher_train: TrainConfig | None = None   # teacher, per period, its full schedule (None: same as
                                           # ``train``): it early-stops on its entire-space validation
    use_source: bool = True                # False: the student sees target samples only
    init: str = "scratch"                  # "scratch" | "teacher" (pre-train then fine-tune)
    # coarse selection [ours]
    graph: str = "ppr"                     # "ppr" | "khop" | "none" (every source item a candidate)
    restart: float = 0.15                  # PPR restart probability
    ppr_iters: int = 20                    # PPR power iterations
    hops: int = 2                          # k-hop: item -> user -> item is 2 hops
    top_m: float = 0.2                     # < 1: share of scored source items kept; >= 1: count
    # fine selection [ours]
    fine: str = "classifier"               # "classifier" | "grl" | "none" (weight 1 for all)
    p_min: float = 0.2                     # keep candidates with p >= p_min
    clip: float = 10.0                     # importance weights clipped here before normalising
    count_scale: bool = False              # also scale p/(1-p) by |candidates| / |target|: off,
                                           # since the class-balanced p/(1-p) already estimates the
                                           # density ratio and the scale would push most weights
                                           # onto the clip (all equal after normalising)
    clf_steps: int = 300                   # full-batch Adam steps of the logistic classifier
    clf_lr: float = 0.05
    clf_max: int = 20000                   # samples per class the classifier is fitted on
    clf_holdout: float = 0.2               # share held out for the reported AUC
    grl_weight: float = 0.1                # weight of the reversed domain loss (fine="grl")
    # distillation [ours]
    distill: str = "adaptive"              # "adaptive" | "constant" | "gate" | "none"
    lam: float = 1.0                       # lambda of the representation term
    teacher_outputs: str = "period"        # "period": the frozen teacher's states and true-item
                                           # probabilities computed once per period over the pool;
                                           # "step": a teacher forward pass in every step (the same
                                           # values up to float rounding, ~a third more per step)
    alpha_const: float = 0.5               # alpha when distill="constant"
    # continual [ours]
    n_periods: int = 4                     # chronological periods (1: train once on everything)
    split_budget: bool = True              # each period gets 1/n_periods of the epochs and step
                                           # cap, so n periods cost what one does
    period_minutes: str = "remaining"      # a student's wall-clock cap in period t: "remaining", what
                                           # the periods before it left of train.max_minutes (period 0
                                           # trains from scratch and needs the most; later ones start
                                           # warm and stop early sooner), or "split", max_minutes / n
                                           # each (as the teachers, which rarely stop early, always get)
    max_teacher_users: int | None = 2000   # teacher validation on a seeded sample of sequences
    one_period_teacher: str = "continual"  # teacher of the one-period variants (joint, pre-train +
                                           # fine-tune, "one period") in run_variants: "continual",
                                           # the last teacher of the n_periods chain (trained on
                                           # everything, period after period: the entire-space model
                                           # an app keeps anyway), or "own", one trained in one go


VARIANTS = {                                   # name -> EcatConfig changes
    "ECAT": {},
    "target-only": {"use_source": False, "distill": "none", "n_periods": 1},
    "joint (unweighted)": {"graph": "none", "fine": "none", "distill": "none", "n_periods": 1},
    "pre-train + fine-tune": {"use_source": False, "init": "teacher", "distill": "none", "n_periods": 1},
    "ECAT w/o graph": {"graph": "none"},
    "ECAT w/o domain adaptation": {"fine": "none"},
    "ECAT w/o distillation": {"distill": "none"},
    "ECAT constant alpha": {"distill": "constant"},
    "ECAT one period": {"n_periods": 1},
}


def check(cfg: EcatConfig) -> None:
    """Raise a clear error for an unknown option."""
    for name, value, allowed in (("graph", cfg.graph, GRAPHS), ("fine", cfg.fine, FINES),
                                 ("distill", cfg.distill, DISTILLS), ("init", cfg.init, INITS),
                                 ("one_period_teacher", cfg.one_period_teacher, ONE_PERIOD_TEACHERS),
                                 ("period_minutes", cfg.period_minutes, PERIOD_MINUTES),
                                 ("teacher_outputs", cfg.teacher_outputs, TEACHER_OUTPUTS)):
        if value not in allowed:
            raise ValueError(f"unknown ECAT {name} {value!r}; choose one of {allowed}")
    if cfg.n_periods < 1:
        raise ValueError(f"n_periods must be >= 1, got {cfg.n_periods}")
    if not 0.0 < cfg.restart < 1.0:
        raise ValueError(f"restart must be in (0, 1), got {cfg.restart}")
    if cfg.clip <= 0:
        raise ValueError(f"clip must be > 0, got {cfg.clip}")


ABLATIONS = ("ECAT w/o graph", "ECAT w/o domain adaptation", "ECAT w/o distillation", "ECAT constant alpha",
             "ECAT one period")
BASELINES = ("target-only", "joint (unweighted)", "pre-train + fine-tune")
