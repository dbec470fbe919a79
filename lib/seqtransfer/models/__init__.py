"""Models: ``nn.Module``s only. Backbones share the :class:`SequentialRecommender` contract."""
from __future__ import annotations

from dataclasses import fields

from .adaptor import LinearExpert, MoEAdaptor, WhiteningExpert
from .base import LOSS_TYPES, SequentialRecommender
from .content import ContentConfig, ContentSASRec, masked_contrastive_loss
from .gru4rec import GRU4Rec, GRU4RecConfig
from .multidomain import MultiDomainConfig, MultiDomainSASRec
from .sasrec import SASRec, SASRecConfig
from .vq import VectorQuantizer, VQConfig, VQOutput, code_usage, perplexity

# id-based backbones by name; content models (ContentSASRec) need feature matrices, built directly
BACKBONES = {"sasrec": (SASRec, SASRecConfig), "gru4rec": (GRU4Rec, GRU4RecConfig)}


def make_backbone(name: str, n_items: int, **overrides) -> SequentialRecommender:
    """Build a backbone by name; keyword overrides go to its config dataclass.

    Unknown keywords are ignored only if they belong to another backbone's config (so one
    settings dict can serve both); anything else is an error.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    cls, cfg_cls = BACKBONES[name]
    own = {f.name for f in fields(cfg_cls)}
    known = {f.name for _, c in BACKBONES.values() for f in fields(c)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown backbone settings {sorted(bad)}; {name} takes {sorted(own)}")
    return cls(n_items, cfg_cls(**{k: v for k, v in overrides.items() if k in own}))
