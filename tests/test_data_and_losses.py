"""Cold-start truncation, genre and cross-dataset domains, the BCE loss and resuming a run whose
checkpoint was loaded onto another device, each on a tiny case with a hand-computed answer."""
import math

import numpy as np
import pytest
import torch

from seqtransfer import data
from seqtransfer.data import DataError
from seqtransfer.data.split import Split
from seqtransfer.evaluate import domain_groups
from seqtransfer.models.base import SequentialRecommender
from seqtransfer.models import make_backbone
from seqtransfer.train import TrainConfig, _rng_state, _set_rng_state, fit

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------------------------------------
# cold-start truncation
# ---------------------------------------------------------------------------------------------

def _split4() -> Split:
    train = [[1, 2, 3, 4, 5], [6, 7], [1, 3, 5, 7, 9, 2], [8, 9, 1]]
    ptr = np.concatenate([[0], np.cumsum([len(t) for t in train])])
    return Split("toy", 4, 9, ptr, np.concatenate(train), np.array([6, 1, 4, 2]), np.array([7, 2, 6, 3]))


def test_truncation_keeps_the_most_recent_items_of_the_chosen_users():
    sp = _split4()
    cut, chosen = data.truncate_histories(sp, frac=0.5, keep=2, seed=0)
    assert chosen.sum() == 2
    for u in range(4):
        want = sp.train_seq(u)[-2:] if chosen[u] else sp.train_seq(u)
        assert cut.train_seq(u).tolist() == want.tolist()
    assert cut.activeness.tolist() == [2 if c else a for c, a in zip(chosen, sp.activeness)]
    assert cut.valid.tolist() == sp.valid.tolist() and cut.test.tolist() == sp.test.tolist()
    again, chosen2 = data.truncate_histories(sp, frac=0.5, keep=2, seed=0)
    assert np.array_equal(chosen, chosen2) and np.array_equal(again.train_items, cut.train_items)
    assert sp.train_seq(2).tolist() == [1, 3, 5, 7, 9, 2]                 # the input is not changed
    none, nobody = data.truncate_histories(sp, frac=0.0, keep=1)
    assert not nobody.any() and np.array_equal(none.train_items, sp.train_items)


def test_leave_one_out_sorts_by_time_whatever_the_row_order():
    import pandas as pd
    from seqtransfer.data.loaders import Interactions
    inter = pd.DataFrame({"user": [0, 0, 1, 0, 1, 1, 0], "item": [4, 1, 2, 3, 5, 1, 2],
                          "timestamp": [40, 10, 7, 30, 9, 8, 20]})
    items = pd.DataFrame({"raw_id": list("abcde")}, index=pd.RangeIndex(1, 6, name="item"))
    sp = data.leave_one_out(Interactions("rows", inter, items, np.array(["u", "v"], dtype=object)))
    assert sp.train_seq(0).tolist() == [1, 2] and (sp.valid[0], sp.test[0]) == (3, 4)
    assert sp.train_seq(1).tolist() == [2] and (sp.valid[1], sp.test[1]) == (1, 5)


@pytest.mark.parametrize("kw, message", [(dict(frac=1.0, keep=2), "frac must be in"),
                                         (dict(frac=-0.1, keep=2), "frac must be in"),
                                         (dict(frac=0.5, keep=0), "keep must be >= 1")])
def test_truncation_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        data.truncate_histories(_split4(), **kw)


# ---------------------------------------------------------------------------------------------
# domains
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def genre_ds(tmp_path):
    inter = tmp_path / "inter.csv"
    inter.write_text("user,item,timestamp\nu1,a,1\nu1,b,2\nu1,c,3\nu1,d,4\nu2,c,1\nu2,d,2\nu2,a,3\nu2,b,4\n")
    items = tmp_path / "items.csv"
    items.write_text("item,title,genres\na,A,Drama|Comedy\nb,B,Drama\nc,C,Comedy|Horror\nd,D,\n")
    return data.load(inter, items_path=items, min_user=1, min_item=1)


@pytest.mark.parametrize("rule, want", [
    ("rarest", ["Comedy", "Drama", "Horror", "unknown"]),        # Drama 2, Comedy 2 (name breaks the tie), Horror 1
    ("first", ["Drama", "Drama", "Comedy", "unknown"]),
    ("most_common", ["Comedy", "Drama", "Comedy", "unknown"]),
])
def test_genre_domains_rules(genre_ds, rule, want):
    ds = data.genre_domains(genre_ds, rule)
    assert ds.items["domain"].tolist() == want                   # items a, b, c, d are ids 1..4
    assert ds.inter["domain"].tolist() == [want[i - 1] for i in ds.inter["item"]]
    assert ds.meta["domain_rule"] == rule


def test_genre_domains_errors(genre_ds, tmp_path):
    with pytest.raises(ValueError, match="unknown rule"):
        data.genre_domains(genre_ds, "alphabetical")
    bare = tmp_path / "bare.csv"
    bare.write_text("user,item,timestamp\nu,a,1\nu,b,2\n")
    with pytest.raises(DataError, match="no genre information"):
        data.genre_domains(data.load(bare, min_user=1, min_item=1))
    with pytest.raises(ValueError, match="do not occur"):
        data.genre_subset(genre_ds, ["Western"])


def test_genre_subset_keeps_films_with_any_genre(genre_ds):
    sub = data.genre_subset(genre_ds, ["Horror", "Drama"])
    assert sorted(sub.items["raw_id"]) == ["a", "b", "c"]
    assert len(sub.inter) == 6 and "d" not in set(sub.items["raw_id"])


def test_combine_keeps_id_spaces_apart_and_domain_groups_follow_targets(genre_ds, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("user,item,timestamp\nu1,a,1\nu1,x,2\nu1,y,3\n")
    tgt = data.load(other, min_user=1, min_item=1)
    both = data.combine(genre_ds, tgt)
    assert (both.n_users, both.n_items) == (3, 7)
    assert both.items.index.tolist() == list(range(1, 8))
    assert both.items["domain"].tolist() == ["inter"] * 4 + ["other"] * 3
    assert both.user_ids.tolist() == ["inter:u1", "inter:u2", "other:u1"]
    t_rows = both.inter[both.inter["domain"] == "other"]
    assert t_rows["user"].unique().tolist() == [2] and sorted(t_rows["item"]) == [5, 6, 7]
    table = data.domain_table(both)
    assert table.loc["inter", "interactions"] == 8 and table.loc["other", "items"] == 3
    with pytest.raises(ValueError, match="different datasets"):
        data.combine(genre_ds, genre_ds)
    with pytest.raises(DataError, match="no domain column"):
        data.domain_table(genre_ds)
    # domain groups: user u is in the domain of its test item
    sp = data.leave_one_out(both)
    groups = domain_groups(sp.item_domain, sp.test)
    assert set(groups) == {"domain:inter", "domain:other"}
    assert groups["domain:inter"].tolist() == [True, True, False]
    assert groups["domain:other"].tolist() == [False, False, True]


# ---------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------

class Fixed(SequentialRecommender):
    """encode() returns a fixed hidden state at every position: the loss alone is under test."""

    def __init__(self, weights, h, loss_type, n_negatives=1):
        super().__init__(len(weights) - 1, len(h), loss_type, n_negatives)
        with torch.no_grad():
            self.item_emb.weight.copy_(torch.tensor(weights))
        self.h = torch.tensor(h)

    def encode(self, seqs):
        return self.h.expand(*seqs.shape, len(self.h))


def test_bce_loss_by_hand():
    # items 1 and 2 share an embedding, so whichever is drawn as the negative scores the same
    m = Fixed([[0.0], [0.5], [0.5]], [1.0], "bce", n_negatives=3)
    seqs = torch.tensor([[1, 2, 0]])
    targets = torch.tensor([[2, 1, 0]])
    s = 0.5                                                  # h . w_item for every item
    want = -math.log(1 / (1 + math.exp(-s))) - 3 * math.log(1 - 1 / (1 + math.exp(-s)))
    got = m.position_losses(seqs, targets)
    assert got[0, :2].tolist() == pytest.approx([want, want]) and got[0, 2] == 0.0
    assert m.loss(seqs, targets).item() == pytest.approx(want)


def test_ce_loss_by_hand():
    m = Fixed([[0.0], [1.0], [2.0], [0.0]], [1.0], "ce")
    logits = [1.0, 2.0, 0.0]                                 # items 1..3; padding excluded (-inf)
    lse = math.log(sum(math.exp(x) for x in logits))
    got = m.position_losses(torch.tensor([[1, 1]]), torch.tensor([[2, 3]]))
    assert got[0].tolist() == pytest.approx([lse - 2.0, lse - 0.0])
    with pytest.raises(ValueError, match="unknown loss_type"):
        Fixed([[0.0], [1.0]], [1.0], "hinge")


def test_bce_training_runs_and_differs_from_ce(toy_csv):
    sd = data.build_sequences(data.leave_one_out(data.load(toy_csv, min_user=1, min_item=1)), max_len=6)
    runs = {}
    for loss in ("ce", "bce"):
        torch.manual_seed(0)
        m = make_backbone("gru4rec", sd.n_items, dim=8, loss_type=loss, n_negatives=2)
        runs[loss] = fit(m, sd, TrainConfig(epochs=2, batch_size=4, progress=False, device="cpu"))
    assert runs["bce"].history["loss"].iloc[-1] < runs["bce"].history["loss"].iloc[0]
    assert runs["bce"].history["loss"].tolist() != runs["ce"].history["loss"].tolist()


# ---------------------------------------------------------------------------------------------
# resume on any device
# ---------------------------------------------------------------------------------------------

class OnOtherDevice:
    """A saved tensor as ``torch.load(map_location=<another device>)`` hands it back: only a
    move to the CPU gives a tensor ``torch.set_rng_state`` accepts (a CUDA tensor would not be
    accepted either)."""

    def __init__(self, t):
        self._t = t

    def cpu(self):
        return self._t


def test_rng_states_loaded_onto_another_device_are_restored_on_the_cpu():
    state = _rng_state()
    want = torch.rand(3)
    moved = {**state, "torch": OnOtherDevice(state["torch"])}
    _set_rng_state(moved)
    assert torch.equal(torch.rand(3), want)


def test_resume_from_a_checkpoint_mapped_to_another_device(toy_csv, tmp_path, monkeypatch):
    import seqtransfer.train as train
    sd = data.build_sequences(data.leave_one_out(data.load(toy_csv, min_user=1, min_item=1)), max_len=6)
    cfg = dict(batch_size=4, progress=False, patience=100, lr=1e-2, device="cpu")

    def run(epochs, ckpt):
        torch.manual_seed(0)
        m = make_backbone("gru4rec", sd.n_items, dim=8)      # dropout draws from the global RNG
        return fit(m, sd, TrainConfig(epochs=epochs, checkpoint_dir=str(ckpt), **cfg))

    full = run(3, tmp_path / "a")
    run(1, tmp_path / "b")
    load = torch.load

    def load_elsewhere(*args, **kwargs):                      # the RNG state arrives off the CPU
        saved = load(*args, **kwargs)
        saved["rng"]["torch"] = OnOtherDevice(saved["rng"]["torch"])
        return saved

    monkeypatch.setattr(train.torch, "load", load_elsewhere)
    resumed = run(3, tmp_path / "b")
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.parametrize("chunk", [1, 5, 128])
def test_chunked_cross_entropy_is_the_full_softmax_and_its_gradients(chunk, monkeypatch):
    # the chunked CPU cross-entropy against F.cross_entropy on the whole logits: the per-row
    # losses and the gradients of h and of the table under per-row weights (how the intervened
    # network and ECAT weight positions), chunks that do not divide the rows; row 0 of the table
    # (padding) is never scored, however high it would score
    from seqtransfer.models import base
    monkeypatch.setattr(base, "CE_CHUNK", chunk)
    torch.manual_seed(0)
    h = torch.randn(23, 6, requires_grad=True)
    table = torch.randn(10, 6)
    table[0] = 50 * h.detach().mean(0)                    # padding: would win every row if scored
    table.requires_grad_()
    y = torch.randint(1, 10, (23,))
    weights = torch.rand(23)
    got = base.next_item_ce(h, table, y)
    (got * weights).sum().backward()
    gh, gt = h.grad.clone(), table.grad.clone()
    h.grad = table.grad = None
    want = torch.nn.functional.cross_entropy(h @ table[1:].t(), y - 1, reduction="none")
    (want * weights).sum().backward()
    torch.testing.assert_close(got, want.detach())
    torch.testing.assert_close(gh, h.grad)
    torch.testing.assert_close(gt, table.grad)
    assert gt[0].abs().max() == 0                          # the padding row gets no gradient
    # the plain path (CUDA, autocast, second order) gives the same
    torch.testing.assert_close(base.next_item_ce(h, table, y, fused=False), want.detach())
    # the chunked backward is first-order only: a gradient that builds a graph (a second-order
    # meta-gradient) raises rather than silently losing the second-order term
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(base.next_item_ce(h, table, y).sum(), h, create_graph=True)
