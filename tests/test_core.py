"""Unit tests of the library core against hand-computed values and small fixtures."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from seqtransfer import data
from seqtransfer.data import DataError
from seqtransfer.evaluate import evaluate, metrics_from_ranks
from seqtransfer.models import make_backbone
from seqtransfer.train import TrainConfig, fit

pytestmark = pytest.mark.unit


def test_metrics_hand_computed():
    m = metrics_from_ranks(np.array([0, 4, 9, 30]), ks=(5, 10))
    assert m[("hr", 5)] == pytest.approx(2 / 4)
    assert m[("hr", 10)] == pytest.approx(3 / 4)
    assert m[("ndcg", 5)] == pytest.approx((1 + 1 / math.log2(6)) / 4)
    assert m[("ndcg", 10)] == pytest.approx((1 + 1 / math.log2(6) + 1 / math.log2(11)) / 4)
    assert m[("mrr", 10)] == pytest.approx((1 + 1 / 5 + 1 / 10) / 4)


def _csv(tmp_path, rows, header="user,item,timestamp"):
    p = tmp_path / "inter.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def _toy(tmp_path):
    rows = [f"u{u},i{(u + t) % 7},{100 * t + u}" for u in range(6) for t in range(6)]
    return data.load(_csv(tmp_path, rows), min_user=1, min_item=1)


def test_leave_one_out_time_order(tmp_path):
    p = _csv(tmp_path, ["a,x,3", "a,y,1", "a,z,2", "a,w,4", "b,x,1", "b,y,2", "b,z,3"])
    ds = data.load(p, min_user=1, min_item=1)
    sp = data.leave_one_out(ds)
    raw = ds.item_ids
    a = list(ds.user_ids).index("a")
    assert [raw[i - 1] for i in sp.train_seq(a)] == ["y", "z"]
    assert raw[sp.valid[a] - 1] == "x" and raw[sp.test[a] - 1] == "w"
    assert sp.activeness.tolist() == [2, 1]


def test_bad_inputs_have_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("ml-5m")
    with pytest.raises(DataError, match="no user column"):
        data.load(_csv(tmp_path, ["a,x,1"], header="person,item,timestamp"))
    with pytest.raises(DataError, match="neither numbers nor dates"):
        data.load(_csv(tmp_path, ["a,x,yesterday"]))
    with pytest.raises(DataError, match="empty after filtering"):
        data.load(_csv(tmp_path, ["a,x,1", "b,y,2"]), min_user=5)


def test_groups_and_lorenz():
    act = np.array([1, 2, 3, 4, 100])
    g = data.activeness_groups(act, head_frac=0.2, cold_max=2)
    assert g["head"].tolist() == [False, False, False, False, True]
    assert g["cold"].tolist() == [True, True, False, False, False]
    _, _, gini = data.lorenz(np.ones(10))
    assert gini == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("backbone,positions", [("sasrec", "recent"), ("sasrec", "left"), ("gru4rec", None)])
def test_padded_eval_is_finite_and_causal(backbone, positions):
    torch.manual_seed(0)
    kw = {"positions": positions} if positions else {}
    m = make_backbone(backbone, 20, dim=16, max_len=8, **kw).eval()
    seqs = torch.tensor([[1, 2, 3, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9, 10, 11]])
    h = m.encode(seqs)
    assert torch.isfinite(h).all()
    # causal: an output never depends on which items come after it
    seqs2 = seqs.clone()
    seqs2[1, 3:] = torch.tensor([12, 13, 14, 15, 16])
    assert torch.allclose(m.encode(seqs2)[1, :3], h[1, :3], atol=1e-5)
    assert not torch.allclose(m.encode(seqs2)[1, 3:], h[1, 3:], atol=1e-3)
    if positions != "recent":
        # right padding with positions from the left: outputs ignore the padding entirely
        seqs3 = seqs.clone()
        seqs3[0, 3:] = 7
        assert torch.allclose(m.encode(seqs3)[0, :3], h[0, :3], atol=1e-5)


@pytest.mark.parametrize("positions", ["recent", "left"])
def test_sasrec_represent_equals_encode_at_the_last_item(positions):
    torch.manual_seed(0)
    m = make_backbone("sasrec", 20, dim=16, max_len=8, positions=positions).eval()
    seqs = torch.tensor([[1, 2, 3, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9, 10, 11], [5, 0, 0, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([3, 8, 1])
    fast = m.represent(seqs, lengths)                                      # last block at one position
    full = m.encode(seqs)[torch.arange(3), lengths - 1]
    assert torch.allclose(fast, full, atol=1e-5)


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_loss_and_represent_is_loss_and_represent_of_one_pass(backbone):
    """Without dropout the pair equals loss() and represent(); in training mode both come from
    one draw: the state it returns is the one the loss scored at the last real position."""
    torch.manual_seed(0)
    m = make_backbone(backbone, 20, dim=16, max_len=8).eval()
    seqs = torch.tensor([[1, 2, 3, 0, 0, 0, 0, 0], [4, 5, 6, 7, 8, 9, 10, 11], [5, 0, 0, 0, 0, 0, 0, 0]])
    targets = torch.tensor([[2, 3, 4, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 10, 11, 12], [6, 0, 0, 0, 0, 0, 0, 0]])
    lengths = torch.tensor([3, 8, 1])
    loss, rep = m.loss_and_represent(seqs, targets, lengths)
    assert torch.allclose(loss, m.loss(seqs, targets), atol=1e-6)
    assert torch.allclose(rep, m.represent(seqs, lengths), atol=1e-5)
    m.train()
    torch.manual_seed(1)
    loss, rep = m.loss_and_represent(seqs, targets, lengths)
    torch.manual_seed(1)
    h = m.encode(seqs)                                                     # the same draw
    assert torch.allclose(rep, h[torch.arange(3), lengths - 1], atol=1e-6)
    assert torch.allclose(loss, m.hidden_losses(h, targets).sum() / 12, atol=1e-6)


def test_loss_and_represent_refuses_a_model_with_its_own_loss():
    from seqtransfer.models import MultiDomainConfig, MultiDomainSASRec
    m = MultiDomainSASRec({"a": 10}, MultiDomainConfig(dim=8, n_layers=1, max_len=8, vq=None))
    m.set_domain("a")
    with pytest.raises(NotImplementedError, match="its own way"):
        m.loss_and_represent(torch.ones(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.long),
                             torch.tensor([8]))


def test_sasrec_scored_position_does_not_reveal_history_length():
    """Positions count from the most recent item: the same last items read the same whatever
    came before them, as long as attention ignores those earlier items; with positions from the
    left the scored position's embedding differs by length."""
    torch.manual_seed(0)
    recent = make_backbone("sasrec", 20, dim=16, max_len=8, positions="recent")
    left = make_backbone("sasrec", 20, dim=16, max_len=8, positions="left")
    left.load_state_dict(recent.state_dict())
    short = torch.tensor([[3, 0, 0, 0]])
    long_ = torch.tensor([[1, 2, 4, 3]])
    # the input vector of the scored (last) item: item embedding + its position embedding
    emb = lambda m, s: m._embed(s)[0, int((s > 0).sum()) - 1]             # noqa: E731
    assert torch.equal(emb(recent.eval(), short), emb(recent.eval(), long_))
    assert not torch.equal(emb(left.eval(), short), emb(left.eval(), long_))


def test_full_ranking_masks_history_and_ranks_perfect_model(tmp_path):
    ds = _toy(tmp_path)
    sd = data.build_sequences(data.leave_one_out(ds), max_len=5)
    m = make_backbone("gru4rec", sd.n_items, dim=8)
    # a model whose score puts each user's target first gets HR@1 = 1
    targets = sd.eval_targets["test"]
    m.represent = lambda seqs, lengths, users=None: torch.nn.functional.one_hot(targets[: len(seqs)], sd.n_items + 1).float()
    m.item_weights = lambda: torch.eye(sd.n_items + 1)
    res = evaluate(m, sd, "test", ks=(1,))
    assert res.query("metric == 'hr'")["value"].iloc[0] == 1.0


def test_training_reduces_loss_and_resume_matches(tmp_path):
    ds = _toy(tmp_path)
    sd = data.build_sequences(data.leave_one_out(ds), max_len=5)
    cfg = dict(batch_size=2, progress=False, patience=100, lr=1e-2)

    def run(epochs, ckpt, resume=True):
        torch.manual_seed(0)
        m = make_backbone("sasrec", sd.n_items, dim=8, n_heads=1, max_len=5)
        return fit(m, sd, TrainConfig(epochs=epochs, checkpoint_dir=str(ckpt), resume=resume, **cfg))

    full = run(3, tmp_path / "a")
    assert full.history["loss"].iloc[-1] < full.history["loss"].iloc[0]
    run(1, tmp_path / "b")
    resumed = run(3, tmp_path / "b")
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v, resumed.model.state_dict()[k], atol=1e-6), k


def test_nan_loss_stops_with_clear_error(tmp_path):
    ds = _toy(tmp_path)
    sd = data.build_sequences(data.leave_one_out(ds), max_len=5)
    m = make_backbone("gru4rec", sd.n_items, dim=8)
    with torch.no_grad():
        m.item_emb.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan"):
        fit(m, sd, TrainConfig(epochs=1, progress=False))


def test_movielens_1m_real_data():
    ds = data.load("ml-1m")
    assert (ds.n_users, ds.n_items) == (6040, 3416)
    sp = data.leave_one_out(ds)
    g = data.activeness_groups(sp.activeness)
    assert 0.19 < g["head"].mean() <= 0.2
