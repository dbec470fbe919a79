"""The evaluator and its inputs on tiny cases with hand-computed answers: ranks and metrics of
both protocols (ties, a repeated item as target, a history longer than ``max_len``, a cold-start
user), the inputs and masks the split hands it, and the guards that stop a NaN model."""
import math

import numpy as np
import pytest
import torch

from seqtransfer import data
from seqtransfer.data.split import Split
from seqtransfer.evaluate import _sample_unseen, evaluate, per_user_metric, rank_targets
from seqtransfer.models import make_backbone
from seqtransfer.models.gru4rec import GRU4Rec
from seqtransfer.train import TrainConfig, fit

pytestmark = pytest.mark.unit

NEG_INF = float("-inf")


class TableModel(torch.nn.Module):
    """Scores looked up by the exact input sequence: ``table[tuple(history)]`` is the score of
    items 1..N. An input the table does not know (a wrong history reached the model) scores
    every item 0, so a test on it fails rather than passes by accident."""

    def __init__(self, table: dict[tuple, list[float]]):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))       # rank_targets reads the device from it
        self.keys = list(table)
        n = len(next(iter(table.values())))
        rows = [[NEG_INF] + list(table[k]) for k in self.keys] + [[NEG_INF] + [0.0] * n]
        self.register_buffer("rows", torch.tensor(rows))      # (K+1, N+1), last row: unknown input

    def represent(self, seqs: torch.Tensor, lengths: torch.Tensor, users=None) -> torch.Tensor:
        idx = [self.keys.index(k) if (k := tuple(s[:n].tolist())) in self.keys else len(self.keys)
               for s, n in zip(seqs.cpu(), lengths.cpu())]
        return torch.tensor(idx, dtype=torch.float32, device=seqs.device)[:, None]   # (B, 1)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        return self.rows[h[:, 0].long()]                        # (B, N+1)


def _split(n_items, train, valid, test) -> Split:
    lens = [len(t) for t in train]
    ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    return Split("hand", len(train), n_items, ptr, np.concatenate(train).astype(np.int64),
                 np.array(valid, dtype=np.int64), np.array(test, dtype=np.int64))


# Three users, six items, max_len 3.
# user 0: history 1 2 3 4 longer than max_len (inputs keep the newest three), valid 5, test 6
# user 1: history 2 3, valid 2 repeats an earlier item (it must not be masked), test 4
# user 2: one training item (cold start), valid 1, test 3
HAND = _split(6, [[1, 2, 3, 4], [2, 3], [6]], valid=[5, 2, 1], test=[6, 4, 3])
SCORES = {                      # input history -> scores of items 1..6, and why
    (2, 3, 4): [9, 8, 7, 6, 3, 3],      # masked 1-4 above target 5; 6 ties it -> rank 1
    (3, 4, 5): [9, 9, 9, 9, 9, 1],      # every other item seen (5 is the valid item) -> rank 0
    (2, 3): [1, 5, 9, 2, 6, 0],         # target 2 (repeat) unmasked; 3 masked; 5 above -> rank 1
    (2, 3, 2): [4, 9, 9, 4, 1, 5],      # target 4: 6 above, 1 ties, 2 and 3 masked -> rank 2
    (6,): [2, 1, 1, 1, 1, 8],           # target 1: 6 masked -> rank 0
    (6, 1): [7, 0, 5, 0, 0, 7],         # target 3: 6 and the valid item 1 masked -> rank 0
}
FULL_RANKS = {"valid": [1, 1, 0], "test": [0, 2, 0]}


@pytest.fixture
def hand():
    return data.build_sequences(HAND, max_len=3), TableModel(SCORES)


def test_eval_inputs_keep_the_newest_items_and_add_the_validation_item_for_test(hand):
    sd, _ = hand
    assert sd.eval_inputs["valid"].tolist() == [[2, 3, 4], [2, 3, 0], [6, 0, 0]]
    assert sd.eval_lengths["valid"].tolist() == [3, 2, 1]
    assert sd.eval_inputs["test"].tolist() == [[3, 4, 5], [2, 3, 2], [6, 1, 0]]
    assert sd.eval_lengths["test"].tolist() == [3, 3, 2]
    # the mask holds the whole history (not only the max_len window), plus the valid item for test
    hist = lambda split, u: sd.history_items[split][sd.history_ptr[split][u]:sd.history_ptr[split][u + 1]].tolist()
    assert [hist("valid", u) for u in range(3)] == [[1, 2, 3, 4], [2, 3], [6]]
    assert [hist("test", u) for u in range(3)] == [[1, 2, 3, 4, 5], [2, 3, 2], [6, 1]]
    assert sd.eval_targets["valid"].tolist() == [5, 2, 1] and sd.eval_targets["test"].tolist() == [6, 4, 3]


def test_training_windows_of_a_long_history_cover_every_transition_once():
    sd = data.build_sequences(_split(9, [[1, 2, 3, 4, 5, 6, 7]], [8], [9]), max_len=3)
    assert sd.train_inputs.tolist() == [[4, 5, 6], [1, 2, 3]]          # most recent window first
    assert sd.train_targets.tolist() == [[5, 6, 7], [2, 3, 4]]
    last = data.build_sequences(_split(9, [[1, 2, 3, 4, 5, 6, 7]], [8], [9]), max_len=3, windows="last")
    assert last.train_inputs.tolist() == [[4, 5, 6]]
    short = data.build_sequences(_split(9, [[1, 2]], [8], [9]), max_len=3)
    assert short.train_inputs.tolist() == [[1, 2, 0]] and short.train_targets.tolist() == [[2, 0, 0]]
    assert short.n_train_positions == 1


@pytest.mark.parametrize("split", ["valid", "test"])
def test_full_ranking_hand_computed_ranks(hand, split):
    sd, model = hand
    assert rank_targets(model, sd, split).tolist() == FULL_RANKS[split]
    assert rank_targets(model, sd, split, batch_size=2).tolist() == FULL_RANKS[split]   # batch edges


def test_batches_grouped_by_length_rank_every_user_as_user_order_does(hand, monkeypatch):
    # the hand users' input lengths run 3, 2, 1 (valid): grouped by length they are visited in
    # reverse, so a rank written back to the wrong user, or a history mask of another user,
    # changes the ranks; every batch size, with and without the grouping
    import seqtransfer.evaluate as ev
    sd, model = hand
    for split in ("valid", "test"):
        for size in (1, 2, 3):
            monkeypatch.setattr(ev, "SORTED_BATCH", size)
            assert rank_targets(model, sd, split).tolist() == FULL_RANKS[split]
            assert rank_targets(model, sd, split, batch_size=size, by_length=False).tolist() == FULL_RANKS[split]
    # a real model over unequal histories: the same ranks grouped by length (the default) and
    # in user order in one batch
    rng = np.random.default_rng(0)
    train = [rng.integers(1, 31, size=n) for n in rng.integers(1, 14, size=60)]
    split = _split(30, train, rng.integers(1, 31, 60), rng.integers(1, 31, 60))
    sd = data.build_sequences(split, max_len=8)
    torch.manual_seed(0)
    sas = make_backbone("sasrec", 30, dim=16, max_len=8)
    monkeypatch.setattr(ev, "SORTED_BATCH", 7)
    for name in ("valid", "test"):
        grouped = rank_targets(sas, sd, name)
        np.testing.assert_array_equal(grouped, rank_targets(sas, sd, name, batch_size=60, by_length=False))


def test_the_padding_column_never_counts_against_the_target(hand):
    sd, _ = hand
    loud = TableModel(SCORES)
    loud.rows[:, 0] = 100.0                      # a model that forgot to score padding -inf
    for split in ("valid", "test"):
        assert rank_targets(loud, sd, split).tolist() == FULL_RANKS[split]


def test_full_ranking_metrics_hand_computed(hand):
    sd, model = hand
    got = evaluate(model, sd, "test", ks=(1, 5)).set_index(["metric", "k"])["value"]
    # test ranks 0, 2, 0
    assert got["hr", 1] == pytest.approx(2 / 3)
    assert got["hr", 5] == pytest.approx(1.0)
    assert got["ndcg", 5] == pytest.approx((1 + 1 / math.log2(4) + 1) / 3)
    assert got["mrr", 5] == pytest.approx((1 + 1 / 3 + 1) / 3)
    val = evaluate(model, sd, "valid", ks=(1, 5)).set_index(["metric", "k"])["value"]
    # valid ranks 1, 1, 0
    assert val["hr", 1] == pytest.approx(1 / 3)
    assert val["ndcg", 5] == pytest.approx((2 / math.log2(3) + 1) / 3)
    assert val["mrr", 5] == pytest.approx((0.5 + 0.5 + 1) / 3)


def test_groups_select_their_users(hand):
    sd, model = hand
    groups = {"all": np.ones(3, bool), "cold": np.array([False, False, True]), "none": np.zeros(3, bool)}
    got = evaluate(model, sd, "test", groups, ks=(1,)).query("metric == 'hr'").set_index("group")
    assert got.loc["all", "value"] == pytest.approx(2 / 3) and got.loc["cold", "value"] == 1.0
    assert got.loc["cold", "n_users"] == 1 and np.isnan(got.loc["none", "value"])
    with pytest.raises(ValueError, match="mask has shape"):
        evaluate(model, sd, "test", {"bad": np.ones(2, bool)})


def test_per_user_metric_formulas():
    r = np.array([0, 1, 3, 9])
    assert per_user_metric(r, "hr", 4).tolist() == [1, 1, 1, 0]
    assert per_user_metric(r, "ndcg", 4).tolist() == pytest.approx([1, 1 / math.log2(3), 1 / math.log2(5), 0])
    assert per_user_metric(r, "mrr", 10).tolist() == pytest.approx([1, 1 / 2, 1 / 4, 1 / 10])
    with pytest.raises(ValueError, match="0-based"):
        per_user_metric(np.array([-1, 0]), "hr", 1)
    with pytest.raises(ValueError, match="unknown metric"):
        per_user_metric(r, "auc", 1)


# Sampled protocol: 12 items, so every user has unseen items to draw from.
# user 0: seen 1-3 (+4 for test), target 4 / 5. Seen items and the target score 10, unseen
#         items 0: every right negative scores below the target (rank 0); a seen item or the
#         target itself among the negatives (a tie counts against) gives rank > 0.
# user 1: seen 6-8 (+9), target 9 / 10. Unseen items tie the target, seen ones score below:
#         ties count against the model, so rank = n_negatives exactly; a seen item among the
#         negatives, or ties counted for the model, lowers it.
SAMPLED = _split(12, [[1, 2, 3], [6, 7, 8]], valid=[4, 9], test=[5, 10])
SAMPLED_SCORES = {
    (1, 2, 3): [10] * 4 + [0] * 8,
    (1, 2, 3, 4): [10] * 5 + [0] * 7,
    (6, 7, 8): [0] * 5 + [-5] * 3 + [0] * 4,
    (6, 7, 8, 9): [0] * 5 + [-5] * 4 + [0] * 3,
}


@pytest.mark.parametrize("split", ["valid", "test"])
def test_sampled_protocol_draws_only_unseen_items_and_has_determined_figures(split):
    sd = data.build_sequences(SAMPLED, max_len=5)
    model = TableModel(SAMPLED_SCORES)
    for seed in range(3):
        assert rank_targets(model, sd, split, protocol="sampled", n_negatives=50, seed=seed).tolist() == [0, 50]
    got = evaluate(model, sd, split, ks=(10,), protocol="sampled", n_negatives=50).set_index("metric")["value"]
    assert got["hr"] == 0.5 and got["ndcg"] == 0.5 and got["mrr"] == 0.5


def test_sample_unseen_never_returns_a_masked_column():
    seen = torch.zeros(3, 8, dtype=torch.bool)
    seen[:, 0] = True                                 # padding
    seen[0, 1:7] = True                               # user 0 may only draw item 7
    seen[1, ::2] = True                               # user 1: odd items only
    out = _sample_unseen(seen, 200, torch.Generator().manual_seed(0))
    assert out.shape == (3, 200)
    assert not seen.gather(1, out).any()
    assert (out[0] == 7).all() and (out[1] % 2 == 1).all()
    assert set(out[2].tolist()) == set(range(1, 8))  # uniform over all real items: each drawn
    seen[0, 7] = True
    with pytest.raises(RuntimeError, match="seen almost every item"):
        _sample_unseen(seen, 5, torch.Generator().manual_seed(0))


def test_bad_split_or_protocol_is_a_clear_error(hand):
    sd, model = hand
    with pytest.raises(ValueError, match="split must be"):
        rank_targets(model, sd, "train")
    with pytest.raises(ValueError, match="protocol must be"):
        rank_targets(model, sd, "valid", protocol="popular")


# ---------------------------------------------------------------------------------------------
# NaN and impossible ranks stop evaluation and training
# ---------------------------------------------------------------------------------------------

def test_nan_scores_raise_in_evaluation_naming_model_and_split(hand):
    sd, _ = hand
    nan_model = TableModel({k: [float("nan")] * 6 for k in SCORES})
    for split in ("valid", "test"):
        with pytest.raises(FloatingPointError, match=f"TableModel gave non-finite scores on the '{split}' split"):
            rank_targets(nan_model, sd, split)
    inf_model = TableModel({k: [float("inf")] + v[1:] for k, v in SCORES.items()})
    with pytest.raises(FloatingPointError, match="non-finite"):
        evaluate(inf_model, sd, "valid")


def test_ranks_out_of_range_raise(hand, monkeypatch):
    sd, _ = hand
    import seqtransfer.evaluate as ev
    monkeypatch.setattr(ev, "_check_scores", lambda *a: None)      # let a -inf target through
    model = TableModel({k: [0.0] * 6 for k in SCORES})
    model.rows[:, 4] = NEG_INF                    # item 4, user 1's test target: all 7 columns >= it
    with pytest.raises(RuntimeError, match=r"1 ranks outside \[0, 6\), e.g. \[6\]"):
        rank_targets(model, sd, "test")


class NaNAtEval(GRU4Rec):
    """Trains normally (finite loss) but scores NaN in eval mode: a model that has gone bad
    where only the evaluator can see it."""

    def score(self, h):
        s = super().score(h)
        return s if self.training else torch.full_like(s, float("nan"))


@pytest.fixture(scope="module")
def toy_data(toy_csv):
    sp = data.leave_one_out(data.load(toy_csv, min_user=1, min_item=1))
    return data.build_sequences(sp, max_len=6)


FAST = dict(batch_size=4, progress=False, device="cpu", lr=1e-2)


def test_a_model_that_scores_nan_stops_training_naming_model_split_and_epoch(toy_data):
    from seqtransfer.models.gru4rec import GRU4RecConfig
    torch.manual_seed(0)
    model = NaNAtEval(toy_data.n_items, GRU4RecConfig(dim=8, hidden=8))
    with pytest.raises(FloatingPointError) as err:
        fit(model, toy_data, TrainConfig(epochs=3, **FAST))
    assert "validation after epoch 0" in str(err.value)
    assert "NaNAtEval gave non-finite scores on the 'valid' split" in str(err.value)


def test_a_nan_validation_metric_is_never_kept_as_best(toy_data):
    torch.manual_seed(0)
    model = make_backbone("gru4rec", toy_data.n_items, dim=8)
    empty = {"all": np.zeros(toy_data.n_users, dtype=bool)}         # NDCG@10 of no users: NaN
    with pytest.raises(FloatingPointError, match="validation NDCG@10 is nan after epoch 0"):
        fit(model, toy_data, TrainConfig(epochs=2, **FAST), groups=empty)


def test_nan_loss_names_the_model(toy_data):
    model = make_backbone("gru4rec", toy_data.n_items, dim=8)
    with torch.no_grad():
        model.item_emb.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="GRU4Rec: training loss became nan at epoch 0, step 0"):
        fit(model, toy_data, TrainConfig(epochs=1, **FAST))


# ---------------------------------------------------------------------------------------------
# train.fit run-length settings
# ---------------------------------------------------------------------------------------------

def test_eval_every_validates_every_nth_epoch_and_the_last(toy_data):
    torch.manual_seed(0)
    model = make_backbone("gru4rec", toy_data.n_items, dim=8)
    res = fit(model, toy_data, TrainConfig(epochs=5, eval_every=2, patience=100, **FAST))
    evaluated = res.history["valid_ndcg10"].notna().tolist()
    assert evaluated == [False, True, False, True, True]            # epochs 1, 3 and the last one
    assert res.best_epoch in (1, 3, 4)
    assert res.best_valid == pytest.approx(res.history["valid_ndcg10"].max())


def test_patience_counts_evaluations_and_keeps_the_best_weights(toy_data):
    torch.manual_seed(0)
    model = make_backbone("gru4rec", toy_data.n_items, dim=8)
    res = fit(model, toy_data, TrainConfig(epochs=30, patience=2, **{**FAST, "lr": 0.0}))
    # lr 0: the model never changes, so the first evaluation stays best and two more end it
    assert len(res.history) == 3 and res.best_epoch == 0 and res.stopped.startswith("early stop")
    assert evaluate(res.model, toy_data, "valid", ks=(10,)).query("metric == 'ndcg'")["value"].iloc[0] == \
        pytest.approx(res.best_valid)


def test_the_best_weights_are_returned_not_the_last(toy_data):
    from seqtransfer.train import Hooks

    def spoil_after_first_epoch(ctx):              # epoch 0 changes nothing; later epochs ruin the model
        if ctx.epoch > 0:
            with torch.no_grad():
                ctx.model.item_emb.weight.zero_()
        return 0.0

    torch.manual_seed(0)
    model = make_backbone("gru4rec", toy_data.n_items, dim=8)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    res = fit(model, toy_data, TrainConfig(epochs=3, patience=100, **FAST), Hooks(step=spoil_after_first_epoch))
    assert res.best_epoch == 0 and res.history["valid_ndcg10"].iloc[-1] < res.best_valid
    for k, v in start.items():
        assert torch.equal(v, res.model.state_dict()[k]), k


def test_max_minutes_stops_after_the_epoch_that_ran_out_and_evaluates_it(toy_data):
    torch.manual_seed(0)
    model = make_backbone("gru4rec", toy_data.n_items, dim=8)
    res = fit(model, toy_data, TrainConfig(epochs=5, max_minutes=0.0, eval_every=3, patience=100, **FAST))
    assert res.stopped == "max_minutes=0.0"
    assert len(res.history) == 1 and res.history["valid_ndcg10"].notna().all()
    res2 = fit(make_backbone("gru4rec", toy_data.n_items, dim=8), toy_data,
               TrainConfig(epochs=3, max_minutes=60.0, patience=100, **FAST))
    assert res2.stopped == "epochs=3" and len(res2.history) == 3


def test_max_steps_stops_mid_epoch(toy_data):
    torch.manual_seed(0)
    res = fit(make_backbone("gru4rec", toy_data.n_items, dim=8), toy_data,
              TrainConfig(epochs=5, max_steps=3, patience=100, **FAST))
    assert res.steps == 3 and res.stopped == "max_steps=3" and len(res.history) == 1


# ---------------------------------------------------------------------------------------------
# the same evaluation on CUDA
# ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_hand_evaluation_on_cuda_equals_cpu(hand, toy_data):
    sd, model = hand
    for split in ("valid", "test"):
        assert rank_targets(model.to("cuda"), sd, split).tolist() == FULL_RANKS[split]
    torch.manual_seed(0)
    m = make_backbone("sasrec", toy_data.n_items, dim=8, n_heads=1, max_len=6).eval()
    cpu = rank_targets(m, toy_data, "test")
    gpu = rank_targets(m.to("cuda"), toy_data, "test")
    assert np.array_equal(cpu, gpu)
    assert np.array_equal(cpu, rank_targets(m, toy_data.to("cuda"), "test"))   # data on the GPU too
    ns = rank_targets(m, toy_data, "test", protocol="sampled", n_negatives=5)
    assert ((ns >= 0) & (ns <= 5)).all()
