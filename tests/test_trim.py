"""Training and evaluation batches cut to their longest window (``data.trim_right``).

The cut is a speed lever (a target of short histories costs a few positions a row instead of
``max_len``); it must never change what a model computes. Every model family is checked on a
hand-made right-padded batch: the loss, its gradient and the representation at the last real
item are the same on the cut batch as on the padded one.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from seqtransfer import data
from seqtransfer.models import (ContentConfig, ContentSASRec, GRU4Rec, GRU4RecConfig, MultiDomainConfig,
                                MultiDomainSASRec, SASRec, SASRecConfig)

pytestmark = pytest.mark.unit

# three windows of lengths 3, 1 and 2, right-padded to 6 columns: the longest real window is 3
SEQS = torch.tensor([[3, 4, 5, 0, 0, 0],
                     [2, 0, 0, 0, 0, 0],
                     [6, 1, 0, 0, 0, 0]])
TARGETS = torch.tensor([[4, 5, 6, 0, 0, 0],
                        [7, 0, 0, 0, 0, 0],
                        [1, 3, 0, 0, 0, 0]])


def test_trim_right_cuts_to_the_longest_window_and_carries_aligned_tensors():
    w = torch.arange(18.0).reshape(3, 6)
    seqs, targets, weights = data.trim_right(SEQS, TARGETS, w)
    assert seqs.tolist() == [[3, 4, 5], [2, 0, 0], [6, 1, 0]]
    assert targets.tolist() == [[4, 5, 6], [7, 0, 0], [1, 3, 0]]
    assert weights.tolist() == w[:, :3].tolist()
    full = torch.tensor([[1, 2], [3, 4]])
    assert data.trim_right(full)[0] is full                     # nothing to cut: the same tensor
    assert data.trim_right(torch.zeros(2, 5, dtype=torch.long))[0].shape == (2, 1)   # all padding: one column


def test_window_batch_returns_cut_inputs_targets_and_owners():
    d = data.SeqData(3, 7, 6, SEQS, TARGETS, torch.tensor([0, 1, 2]), {}, {}, {}, {}, {}, np.ones(3))
    x, y, u = d.window_batch(torch.tensor([1, 2]))
    assert x.tolist() == [[2, 0], [6, 1]] and y.tolist() == [[7, 0], [1, 3]] and u.tolist() == [1, 2]


def _models():
    torch.manual_seed(0)
    feats = {"text": torch.randn(8, 5), "numeric": torch.randn(8, 3)}
    yield "sasrec recent", SASRec(7, SASRecConfig(dim=8, n_heads=2, max_len=6, positions="recent"))
    yield "sasrec left", SASRec(7, SASRecConfig(dim=8, n_heads=2, max_len=6, positions="left"))
    yield "gru4rec", GRU4Rec(7, GRU4RecConfig(dim=8))
    yield "content", ContentSASRec(feats, ContentConfig(dim=8, max_len=6, n_experts=2, product=None))
    yield "multidomain", MultiDomainSASRec({"a": 7}, MultiDomainConfig(dim=8, n_layers=1, max_len=6))


@pytest.mark.parametrize("name,model", list(_models()), ids=[n for n, _ in _models()])
def test_a_cut_batch_gives_every_model_the_same_loss_gradient_and_representation(name, model):
    model.eval()                                                 # dropout off: both passes are deterministic
    cut_x, cut_y = data.trim_right(SEQS, TARGETS)
    assert cut_x.shape[1] == 3
    grads = []
    for x, y in ((SEQS, TARGETS), (cut_x, cut_y)):
        model.zero_grad()
        loss = model.loss(x, y)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (l_full, g_full), (l_cut, g_cut) = grads
    torch.testing.assert_close(l_cut, l_full)
    assert len(g_full) == len(g_cut) > 0
    for a, b in zip(g_full, g_cut):
        torch.testing.assert_close(b, a)
    lengths = (SEQS > 0).sum(1)
    with torch.no_grad():
        torch.testing.assert_close(model.represent(cut_x, lengths), model.represent(SEQS, lengths))
