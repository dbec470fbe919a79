"""ECAT's mechanisms on tiny cases with hand-computed answers (METHODS.md, ECAT tests): graph
selection on a two-component graph, PPR along a path, the Gaussian domain-shift toy, the
density-ratio formula with clipping, the adaptive distillation weight and its missing gradient,
the weighted loss, warm starts between periods, and no leakage of the target's future."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from seqtransfer import data as D
from seqtransfer import entire
from seqtransfer.budget import get_budget
from seqtransfer.methods import ecat
from seqtransfer.train import TrainConfig

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------------------------------------
# coarse selection
# ---------------------------------------------------------------------------------------------

def _two_components():
    # component 1: users 0, 1 with items 1 (target), 2, 3; component 2: users 2, 3 with items 4, 5
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    items = np.array([1, 2, 1, 3, 4, 5, 4, 5])
    target = np.zeros(6, dtype=bool)
    target[1] = True
    return ecat.interaction_graph(users, items, 4, 5), target


@pytest.mark.parametrize("graph", ["ppr", "khop"])
def test_only_the_targets_component_is_selected(graph):
    adj, target = _two_components()
    scores = ecat.item_scores(adj, 4, target, ecat.EcatConfig(graph=graph))
    assert scores[4] == 0 and scores[5] == 0 and scores[2] > 0 and scores[3] > 0
    chosen = ecat.coarse_select(scores, target, top_m=10)          # more than exist: all scored
    assert chosen.tolist() == [False, False, True, True, False, False]


def test_graph_none_makes_every_source_item_a_candidate():
    adj, target = _two_components()
    scores = ecat.item_scores(adj, 4, target, ecat.EcatConfig(graph="none"))
    assert ecat.coarse_select(scores, target, 10).tolist() == [False, False, True, True, True, True]


def test_top_m_share_and_count():
    scores = np.array([0.0, 0.9, 0.5, 0.4, 0.3, 0.0])              # item 1 is the target
    target = np.array([False, True, False, False, False, False])
    assert np.flatnonzero(ecat.coarse_select(scores, target, 2)).tolist() == [2, 3]
    assert np.flatnonzero(ecat.coarse_select(scores, target, 0.34)).tolist() == [2]   # 1 of 3 scored


def test_ppr_falls_with_hop_distance_on_a_path():
    # item1 - u0 - item2 - u1 - item3 - u2 - item4 - u3 - item5 - u4 - item6 - u5 (a path)
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5])
    items = np.array([1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    adj = ecat.interaction_graph(users, items, 6, 6)
    r = ecat.ppr(adj, np.array([6 + 1]), restart=0.15, iters=200)
    assert r.sum() == pytest.approx(1.0)
    item_scores = r[6 + np.arange(1, 7)]
    assert np.all(np.diff(item_scores) < 0), item_scores
    user_scores = r[:6]
    assert np.all(np.diff(user_scores) < 0), user_scores


def test_ppr_by_hand_on_two_nodes():
    # one user, one item, seed the item: r_item = c + (1-c) r_user, r_user = (1-c) r_item
    adj = ecat.interaction_graph(np.array([0]), np.array([1]), 1, 1)
    r = ecat.ppr(adj, np.array([2]), restart=0.15, iters=500)
    c = 0.15
    r_item = c / (1 - (1 - c) ** 2)
    assert r[2] == pytest.approx(r_item) and r[0] == pytest.approx((1 - c) * r_item)


def test_khop_distances():
    users = np.array([0, 0, 1, 1])
    items = np.array([1, 2, 2, 3])                                  # item1 - u0 - item2 - u1 - item3
    adj = ecat.interaction_graph(users, items, 2, 3)
    s = ecat.khop(adj, np.array([2 + 1]), hops=2)
    assert s[2 + 1] == 1.0 and s[0] == 0.5 and s[2 + 2] == pytest.approx(1 / 3)
    assert s[1] == 0 and s[2 + 3] == 0                              # 3 and 4 hops away


def test_graph_counts_repeats_once_and_adds_bridges():
    adj = ecat.interaction_graph(np.array([0, 0]), np.array([1, 1]), 1, 2, bridges=np.array([[1, 2]]))
    assert adj[0, 2] == 1.0 and adj[2, 0] == 1.0                    # user 0 - item 1 once
    assert adj[2, 3] == 1.0 and adj[3, 2] == 1.0                    # bridge item 1 - item 2


def test_ppr_needs_a_seed():
    adj, _ = _two_components()
    with pytest.raises(ValueError, match="at least one seed"):
        ecat.ppr(adj, np.array([], dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# fine selection
# ---------------------------------------------------------------------------------------------

def test_gaussian_domain_shift_keeps_the_matching_half():
    rng = np.random.default_rng(0)
    # 8x more candidates than target samples: only a class-balanced classifier keeps p ~ 2/3
    # on the matching half (an unbalanced one would put it near 1/5, at the cut)
    xt = rng.normal(0, 1, (500, 4))
    xc = np.concatenate([rng.normal(0, 1, (2000, 4)), rng.normal(4, 1, (2000, 4))])
    p, auc = ecat.domain_classifier(xt, xc, seed=0)
    kept, w = ecat.importance_weights(p, len(xt), p_min=0.3, clip=10.0)
    assert kept[:2000].mean() > 0.9
    assert kept[2000:].mean() < 0.05
    assert w[kept].mean() == pytest.approx(1.0)
    assert 0.55 < np.median(p[:2000]) < 0.8 and np.median(p[2000:]) < 0.1
    assert 0.6 < auc < 0.9       # half the candidates look like the target: not separable


def test_density_ratio_formula_with_clipping():
    p = np.array([0.5, 0.9, 0.1, 0.99])
    kept, w = ecat.importance_weights(p, n_target=2, p_min=0.2, clip=10.0, count_scale=True)
    # p/(1-p) = 1, 9, (dropped), 99; times |cand|/|target| = 4/2 -> 2, 18, 198; clip -> 2, 10, 10
    raw = np.array([2.0, 10.0, 10.0])
    assert kept.tolist() == [True, True, False, True]
    assert np.allclose(w, [raw[0] / raw.mean(), raw[1] / raw.mean(), 0.0, raw[2] / raw.mean()])
    _, w2 = ecat.importance_weights(p, n_target=2, p_min=0.2, clip=10.0, count_scale=False)
    raw2 = np.array([1.0, 9.0, 10.0])                               # 99 clipped to 10
    assert np.allclose(w2[[0, 1, 3]], raw2 / raw2.mean())


def test_auc_by_hand():
    assert ecat.auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert ecat.auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert ecat.auc(np.array([0.1, 0.6]), np.array([0.5])) == 0.5


def test_gradient_reversal_flips_the_gradient():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (ecat.grad_reverse(x) * torch.tensor([3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [-3.0, -4.0]


# ---------------------------------------------------------------------------------------------
# adaptive distillation
# ---------------------------------------------------------------------------------------------

def _logits_for(prob: float, n: int = 4) -> torch.Tensor:
    """Logits over n items where item 1 has probability ``prob`` and the rest share the remainder."""
    rest = (1 - prob) / (n - 1)
    return torch.log(torch.tensor([[prob] + [rest] * (n - 1)]))


def test_adaptive_alpha_values():
    y = torch.tensor([0])
    pt = ecat.true_prob(_logits_for(0.9), y)
    ps = ecat.true_prob(_logits_for(0.1), y)
    assert pt.item() == pytest.approx(0.9) and ps.item() == pytest.approx(0.1)
    assert ecat.adaptive_alpha(pt, ps).item() == pytest.approx(0.9)
    wrong = ecat.adaptive_alpha(torch.tensor([0.01]), torch.tensor([0.5]))   # teacher wrong
    assert wrong.item() < 0.05


def test_alpha_carries_no_gradient():
    ls = _logits_for(0.1).requires_grad_(True)
    lt = _logits_for(0.9).requires_grad_(True)
    y = torch.tensor([0])
    alpha = ecat.adaptive_alpha(ecat.true_prob(lt, y), ecat.true_prob(ls, y))
    assert not alpha.requires_grad
    hs = torch.zeros(1, 2, requires_grad=True)
    loss = ecat.ecat_loss(torch.tensor([0.0]), torch.tensor([1.0]), hs, torch.tensor([[1.0, 0.0]]), alpha, lam=1.0)
    loss.backward()
    assert ls.grad is None and lt.grad is None                      # nothing flows into alpha's inputs
    assert torch.allclose(hs.grad, torch.tensor([[-0.9, 0.0]]))   # d/dh alpha * ||h - t||^2 / 2


def test_weighted_loss_against_manual():
    ce = torch.tensor([1.0, 2.0])
    w = torch.tensor([0.5, 2.0])
    hs = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    ht = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    alpha = torch.tensor([0.5, 1.0])
    # squared distances 1 and 1, over D = 2 dimensions: 0.5 each
    # (0.5*1 + 0.1*0.5*0.5 + 2*2 + 0.1*1*0.5) / 2 = (0.525 + 4.05) / 2
    assert ecat.ecat_loss(ce, w, hs, ht, alpha, lam=0.1).item() == pytest.approx(2.2875)
    assert ecat.ecat_loss(ce, w).item() == pytest.approx(2.25)


def test_unknown_options_are_named():
    with pytest.raises(ValueError, match="unknown ECAT distill 'soft'"):
        ecat.check(ecat.EcatConfig(distill="soft"))
    with pytest.raises(ValueError, match="n_periods"):
        ecat.check(ecat.EcatConfig(n_periods=0))


# ---------------------------------------------------------------------------------------------
# the setting, continual training
# ---------------------------------------------------------------------------------------------

def toy_space(n_users: int = 24, seed: int = 0) -> D.Interactions:
    """Users rate 14 items in time order: items 1-4 are domain A (the target), 5-16 domain B."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        seq = list(rng.choice(np.arange(1, 5), 6)) + list(rng.choice(np.arange(5, 17), 8, replace=False))
        rng.shuffle(seq)
        rows += [(u, int(i), 1000 * u + 10 * t) for t, i in enumerate(seq)]
    inter = pd.DataFrame(rows, columns=["user", "item", "timestamp"])
    items = pd.DataFrame({"raw_id": np.arange(1, 17), "title": [f"t{i}" for i in range(1, 17)],
                          "year": 2000, "genres": [()] * 16,
                          "domain": ["A"] * 4 + ["B"] * 12}, index=pd.RangeIndex(1, 17, name="item"))
    inter["domain"] = items["domain"].reindex(inter["item"]).to_numpy()
    return D.Interactions("toy", inter, items, np.array([str(u) for u in range(n_users)], dtype=object))


def _setting():
    b = get_budget("smoke", max_len=10, dim=8)
    return entire.make_setting(toy_space(), "A", b, seed=0, device="cpu", min_len=4, progress=False)


def test_no_target_future_in_the_entire_space():
    s = _setting()
    ent = s.entire.inter
    tsplit = s.target.split
    raw_target_users = s.target.dataset.user_ids
    for k, raw in enumerate(raw_target_users):
        u = int(np.flatnonzero(s.entire.user_ids == raw)[0])
        valid_item = tsplit.valid[k]
        t_valid = s.target.dataset.inter.query("user == @k and item == @valid_item")["timestamp"].max()
        assert (ent[ent["user"] == u]["timestamp"] < t_valid).all()
    assert s.target_items.tolist() == [False] + [True] * 4 + [False] * 12
    assert s.target.data.n_items == s.split.n_items == 16


def test_student_starts_each_period_where_the_last_ended():
    s = _setting()
    cfg = ecat.EcatConfig(backbone_kwargs={"dim": 8, "n_heads": 1},
                          train=TrainConfig(epochs=1, max_steps=2, batch_size=8, device="cpu", progress=False),
                          n_periods=3, top_m=0.5, clf_steps=20, p_min=0.0)
    seen = []
    ecat.continual(s, cfg, seed=0, observe=lambda t, stage, m: seen.append(
        (t, stage, {k: v.detach().clone() for k, v in m.state_dict().items()})))
    assert [(t, st) for t, st, _ in seen] == [(t, st) for t in range(3) for st in ("start", "end")]
    for t in range(2):
        end, nxt = seen[2 * t + 1][2], seen[2 * t + 2][2]
        assert all(torch.equal(end[k], nxt[k]) for k in end)
    first_start, first_end = seen[0][2], seen[1][2]
    assert any(not torch.equal(first_start[k], first_end[k]) for k in first_start)   # it trained


def test_teacher_continues_between_periods():
    """Period 1's teacher starts from period 0's weights (lr 0 keeps them) and trains a copy:
    period 0's result, which other runs read, is unchanged by it."""
    s = _setting()
    cfg = ecat.EcatConfig(backbone_kwargs={"dim": 8, "n_heads": 1},
                          train=TrainConfig(epochs=1, max_steps=2, batch_size=8, device="cpu", progress=False),
                          n_periods=2)
    teachers, hist = ecat.train_teachers(s, cfg, 0)
    assert len(teachers) == 2 and set(hist["period"]) == {0, 1}
    data = ecat.teacher_data(s, 2, cfg.max_teacher_users, 0)
    first = ecat.teacher(data[0], None, cfg, 0, period=0, periods=2)
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    still = ecat.teacher(data[1], None, replace(cfg, train=replace(cfg.train, lr=0.0, warmup_steps=0)), 0,
                         previous=first, period=1, periods=2)
    assert all(torch.equal(still.model.state_dict()[k], v) for k, v in before.items())    # continued from it
    moved = ecat.teacher(data[1], None, cfg, 0, previous=first, period=1, periods=2)
    with pytest.raises(ValueError, match="period must be in"):
        ecat.teacher(data[1], None, cfg, 0, previous=first, period=1)
    assert any(not torch.equal(moved.model.state_dict()[k], v) for k, v in before.items())
    assert all(torch.equal(first.model.state_dict()[k], v) for k, v in before.items())    # the input untouched
    # each period's teacher sees the entire space up to its cut only
    cuts = ecat.period_cuts(s.times, 2)
    for t in range(2):
        cut = D.build_sequences(ecat.truncate(s.split, s.times, cuts[t]), s.target.data.max_len)
        assert torch.equal(data[t].train_inputs, cut.train_inputs) and torch.equal(data[t].train_targets, cut.train_targets)
    assert data[0].n_train_positions < data[1].n_train_positions


def test_period_cuts_and_truncate():
    cuts = ecat.period_cuts(np.array([1, 2, 3, 4]), 2)
    assert cuts[0] == 2.5 and np.isinf(cuts[1])
    split = D.Split("x", 2, 5, np.array([0, 3, 5]), np.array([1, 2, 3, 4, 5]), np.zeros(2, int), np.zeros(2, int))
    t = ecat.truncate(split, np.array([1, 5, 9, 2, 7]), 5)
    assert t.train_ptr.tolist() == [0, 2, 3] and t.train_items.tolist() == [1, 2, 4]


def test_train_timestamps_align_with_the_split():
    ds = toy_space(4)
    split = D.leave_one_out(ds)
    times = entire.train_timestamps(ds)
    assert len(times) == len(split.train_items)
    lookup = ds.inter.set_index(["user", "timestamp"])["item"]
    owner = np.repeat(np.arange(split.n_users), np.diff(split.train_ptr))
    assert all(lookup[(u, t)] == i for u, t, i in zip(owner, times, split.train_items))


def test_title_bridges():
    items = pd.DataFrame({"title": ["Heat (1995)", "Up", "heat (1995) ", "Other"],
                          "domain": ["a", "a", "b", "b"]}, index=pd.RangeIndex(1, 5))
    assert entire.title_bridges(items, "a", "b").tolist() == [[1, 3]]


def test_target_scored_masks_other_domains_in_eval_only():
    from seqtransfer.models import make_backbone
    torch.manual_seed(0)
    m = ecat.TargetScored(make_backbone("sasrec", 4, dim=8, n_heads=1, max_len=5),
                          np.array([False, True, False, True, False]))
    h = torch.randn(2, 8)
    m.train()
    assert torch.isfinite(m.score(h)[:, 1:]).all()
    m.eval()
    s = m.score(h)
    low = torch.finfo(s.dtype).min
    assert (s[:, [0, 2, 4]] == low).all()                      # padding and other domains: lowest
    assert torch.isfinite(s).all() and (s[:, [1, 3]] > low).all()


def _cfg(**kw):
    return ecat.EcatConfig(backbone_kwargs={"dim": 8, "n_heads": 1},
                           train=TrainConfig(epochs=1, max_steps=2, batch_size=8, device="cpu", progress=False),
                           clf_steps=20, **kw)


def test_select_weights_only_chosen_source_positions():
    s = _setting()
    cfg = _cfg(top_m=3, p_min=0.0)
    data = D.build_sequences(s.split, 10)
    teachers, _ = ecat.train_teachers(s, ecat.EcatConfig(**{**cfg.__dict__, "n_periods": 1}))
    w, stats = ecat.select(s, s.split, data, teachers[0], cfg)
    tg = data.train_targets
    chosen = np.unique(tg[w > 0].numpy())
    assert len(chosen) <= 3 and not s.target_items[chosen].any()    # source items only, top 3
    assert w[tg == 0].eq(0).all()                                   # never padding
    assert w[w > 0].mean().item() == pytest.approx(1.0, abs=1e-5)
    assert stats["selected"] == int((w > 0).sum()) <= stats["graph candidates"] <= stats["source samples"]
    assert stats["target samples (entire space)"] == int(torch.as_tensor(s.target_items)[tg][tg > 0].sum())


@pytest.mark.parametrize("name", list(ecat.VARIANTS) + ["gate", "grl", "khop"])
def test_every_variant_and_option_runs(name):
    s = _setting()
    options = {"gate": {"distill": "gate"}, "grl": {"fine": "grl"}, "khop": {"graph": "khop"}}
    change = ecat.VARIANTS[name] if name in ecat.VARIANTS else options[name]
    cfg = _cfg(n_periods=2, top_m=0.5)
    from dataclasses import replace
    r = ecat.fit(s.target.data, s.target.groups, replace(cfg, **change), seed=0, variant=name, setting=s)
    assert r.ndcg10() >= 0 and {"all", "tail"} <= set(r.metrics["group"])
    d = r.diagnostics
    assert len(d["counts"]) == replace(cfg, **change).n_periods
    if replace(cfg, **change).distill in ("adaptive", "gate"):
        assert d["alpha"]["alpha"].between(0, 1).all() and len(d["alpha"])


def test_period_budget_split():
    t = TrainConfig(epochs=4, max_steps=10)
    assert (ecat.period_train(t, 4).epochs, ecat.period_train(t, 4).max_steps) == (1, 3)
    assert ecat.period_train(t, 3).epochs == 2 and ecat.period_train(TrainConfig(epochs=4), 4).max_steps is None
    assert ecat.period_train(t, 4, split=False) == t and ecat.period_train(t, 1) == t
    assert ecat.period_train(TrainConfig(max_minutes=8.0), 4).max_minutes == 2.0


def test_without_graph_every_source_position_is_a_candidate():
    s = _setting()
    data = D.build_sequences(s.split, 10)
    w, stats = ecat.select(s, s.split, data, None, _cfg(graph="none", fine="none", top_m=0.1))
    tg = data.train_targets
    source = (tg > 0) & ~torch.as_tensor(s.target_items)[tg]
    assert torch.equal(w > 0, source) and stats["graph candidates"] == stats["source samples"]


def test_history_runs_on_across_periods():
    s = _setting()
    r = ecat.fit(s.target.data, s.target.groups, _cfg(n_periods=3, top_m=0.5), seed=0, setting=s)
    h = r.history
    assert h["period"].tolist() == [0, 1, 2] and h["epoch"].tolist() == [0, 1, 2]
    assert h["step"].is_monotonic_increasing and h["step"].iloc[-1] == r.train.steps + h["step"].iloc[-2]


def test_a_period_without_candidates_transfers_nothing():
    s = _setting()
    data = D.build_sequences(s.split, 10)
    w, stats = ecat.select(s, s.split, data, None, _cfg(top_m=0))       # no candidate item
    assert stats["graph candidates"] == 0 and stats["selected"] == 0 and not (w > 0).any()


def test_runs_with_the_same_selection_share_it():
    s = _setting()
    cfg = _cfg(n_periods=2, top_m=0.5)
    teachers, _ = ecat.train_teachers(s, cfg)
    cache = {}
    _, a = ecat.continual(s, cfg, 0, teachers, cache=cache)
    assert len(cache) == 2                                          # one selection per period
    _, b = ecat.continual(s, replace(cfg, distill="none"), 0, teachers, cache=cache)
    assert len(cache) == 2                                          # reused: same key
    assert a["counts"].equals(b["counts"])
    _, fresh = ecat.continual(s, cfg, 0, teachers, cache={})        # recomputed: the same samples
    assert np.array_equal(fresh["w"]["w"], a["w"]["w"])
    ecat.continual(s, replace(cfg, p_min=0.5), 0, teachers, cache=cache)
    assert len(cache) == 4                                          # a different cut selects anew
    # without a cache of its own, runs on the same teacher objects share the process-wide one
    shared = ecat.periods._shared_selections(s, teachers)
    ecat.continual(s, cfg, 0, teachers)
    assert len(shared) == 2 and ecat.periods._shared_selections(s, teachers) is shared
    assert ecat.periods._shared_selections(s, [copy_of(m) for m in teachers]) is not shared


def copy_of(m):
    import copy
    return copy.deepcopy(m)


def _step_case(distill="adaptive", fine="classifier", teacher_outputs="period"):
    from seqtransfer.models import make_backbone
    from seqtransfer.train import StepContext
    from contextlib import nullcontext
    torch.manual_seed(0)
    mk = lambda: make_backbone("sasrec", 6, dim=4, n_heads=1, max_len=3, dropout=0.0)   # noqa: E731
    teacher, student = mk().eval(), ecat.TargetScored(mk(), np.array([False, True, True, False, False, False, False]),
                                                     gate=distill == "gate", domain_head=fine == "grl")
    x = torch.tensor([[1, 2, 3], [4, 5, 0]])
    y = torch.tensor([[2, 3, 4], [5, 6, 0]])
    w = torch.tensor([[1.0, 0.0, 2.0], [0.5, 1.0, 0.0]])           # (0, 1) dropped; padding 0
    cfg = _cfg(distill=distill, fine=fine, lam=0.3, teacher_outputs=teacher_outputs)
    hooks = ecat.student_hooks(x, y, w, teacher, cfg, [], torch.tensor([[1.0] * 3, [0.0] * 3]))
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    data = D.build_sequences(D.Split("x", 1, 6, np.array([0, 3]), np.array([1, 2, 3]), np.array([4]),
                                     np.array([5])), 3)
    ctx = StepContext(student, opt, data, torch.tensor([0, 1]), 0, 0, cfg.train, nullcontext)
    return hooks, ctx, teacher, student, x, y, w


@pytest.mark.parametrize("teacher_outputs", ["period", "step"])
def test_step_loss_against_manual(teacher_outputs):
    hooks, ctx, teacher, student, x, y, w = _step_case(teacher_outputs=teacher_outputs)
    with torch.no_grad():
        m = w > 0
        hs, ht = student.backbone.encode(x)[m], teacher.encode(x)[m]
        ls, lt = student.backbone.score(hs), teacher.score(ht)
        ys = y[m]
        ce = torch.nn.functional.cross_entropy(ls, ys, reduction="none")
        ps, pt = torch.softmax(ls, -1)[range(len(ys)), ys], torch.softmax(lt, -1)[range(len(ys)), ys]
        alpha = pt / (pt + ps)
        dist = ((hs - ht) ** 2).mean(-1)                             # P is the identity at start
        manual = (w[m] * ce + 0.3 * alpha * dist).sum() / 4          # 4 positions with w > 0
    assert hooks.step(ctx) == pytest.approx(manual.item(), rel=1e-5)


def test_teacher_outputs_once_are_what_each_batch_computes():
    """The teacher's states and true-item probabilities computed once over the pool are, at
    every weighted position of any batch (rows in any order, cut to the batch's longest window),
    what a teacher forward pass on that batch gives; an index in the wrong order, or one that
    counts the unweighted cells, fails."""
    from seqtransfer.data import trim_right
    from seqtransfer.models import make_backbone
    torch.manual_seed(0)
    teacher = make_backbone("sasrec", 9, dim=4, n_heads=1, max_len=4, dropout=0.3).eval()
    x = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [7, 0, 0, 0], [2, 4, 6, 8], [3, 0, 0, 0]])
    y = torch.tensor([[2, 3, 4, 5], [6, 7, 0, 0], [8, 0, 0, 0], [4, 6, 8, 9], [1, 0, 0, 0]])
    w = torch.tensor([[1.0, 0.0, 2.0, 1.0], [0.5, 1.0, 0, 0], [0.0, 0, 0, 0], [1, 1, 0.0, 3], [1.0, 0, 0, 0]])
    index, h, p = ecat.student.teacher_outputs(teacher, x, y, w, chunk=2)
    assert h.shape == (int((w > 0).sum()), 4) and (index >= 0).sum() == len(p)
    for batch in (torch.tensor([1, 4]), torch.tensor([3, 0, 2]), torch.tensor([4, 2, 1, 0, 3])):
        seqs, tgt, ww = trim_right(x[batch], y[batch], w[batch])
        m = ww > 0
        with torch.no_grad():
            ht = teacher.encode(seqs)[m]
            pt = ecat.true_prob(teacher.score(ht), tgt[m])
        at = index[batch][:, :seqs.shape[1]][m]
        assert torch.allclose(h[at], ht, atol=1e-6) and torch.allclose(p[at], pt, atol=1e-7)


def test_gate_and_domain_head_get_gradients():
    hooks, ctx, *_ = _step_case(distill="gate", fine="grl")
    hooks.step(ctx)
    assert ctx.model.gate.weight.grad.abs().sum() > 0 and ctx.model.domain_head.weight.grad.abs().sum() > 0
    assert ctx.model.proj.weight.grad.abs().sum() > 0


def test_fine_tune_starts_from_the_teacher_and_trains_everything():
    s = _setting()
    cfg = replace(_cfg(), **ecat.VARIANTS["pre-train + fine-tune"])
    teachers, _ = ecat.train_teachers(s, cfg)
    for p in teachers[0].parameters():
        p.requires_grad_(False)                                     # as after serving as a teacher
    seen = []
    ecat.continual(s, cfg, 0, teachers, observe=lambda t, st, m: seen.append(
        {k: v.detach().clone() for k, v in m.backbone.state_dict().items()}))
    start = seen[0]
    assert all(torch.equal(start[k], v) for k, v in teachers[0].state_dict().items())
    assert all(not torch.equal(seen[1][k], start[k]) for k in start if k.startswith("blocks.0.attn.qkv"))


def test_entire_sample_keeps_every_target_user_and_samples_the_rest():
    users = np.arange(10)
    got = entire.entire_sample(users, np.array([2, 7]), 5, seed=0)
    assert len(got) == 5 and {2, 7} <= set(got.tolist()) and np.all(np.diff(got) > 0)
    assert np.array_equal(entire.entire_sample(users, np.array([2, 7]), 5, seed=0), got)       # seeded
    assert np.array_equal(entire.entire_sample(users, np.array([2, 7]), None), users)
    assert np.array_equal(entire.entire_sample(users, np.array([2, 7]), 50), users)
    assert np.array_equal(entire.entire_sample(users, np.array([2, 7]), 2), [2, 7])
    with pytest.raises(ValueError, match="entire_users=1 is below the target's 2 users"):
        entire.entire_sample(users, np.array([2, 7]), 1)


def test_a_sampled_entire_space_keeps_the_target_and_its_cut():
    b = get_budget("smoke", max_len=10, dim=8)
    space = toy_space()
    inter = space.inter
    space = replace(space, inter=inter[~((inter["user"] < 8) & (inter["domain"] == "A"))].reset_index(drop=True))
    full = entire.make_setting(space, "A", b, seed=0, device="cpu", min_len=4, progress=False)
    s = entire.make_setting(space, "A", b, seed=0, device="cpu", min_len=4, progress=False, entire_users=20)
    assert full.target.data.n_users == 16 and full.entire.n_users == 24
    assert s.entire.n_users == 20
    assert set(s.target.dataset.user_ids) <= set(s.entire.user_ids)      # every target user stays
    assert s.target.dataset.user_ids.tolist() == full.target.dataset.user_ids.tolist()
    kept = full.entire.inter[full.entire.inter["user"].isin(
        [int(np.flatnonzero(full.entire.user_ids == r)[0]) for r in s.entire.user_ids])]
    assert len(kept) == len(s.entire.inter)                              # same no-leak cut per user


def test_recent_history_keeps_each_users_most_recent_rows():
    """Hand-computed: user 0 has times 5, 1, 3, 3 (rows out of order, a tie at 3: the later row
    is the more recent); user 1 has two rows; with n=2 user 0 keeps times 5 and the second 3."""
    inter = pd.DataFrame({"user": [0, 1, 0, 0, 1, 0], "timestamp": [5, 7, 1, 3, 2, 3]})
    assert entire.recent_history(inter, 2).tolist() == [True, True, False, False, True, True]
    assert entire.recent_history(inter, 1).tolist() == [True, True, False, False, False, False]
    assert entire.recent_history(inter, None).all() and entire.recent_history(inter, 9).all()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="entire_history must be a whole number"):
            entire.recent_history(inter, bad)


def test_a_short_entire_history_cuts_the_entire_space_not_the_target():
    """``entire_history`` keeps each entire-space user's most recent interactions after the
    no-leak cut; the target's subsequences, its users and its split stay as they were."""
    b = get_budget("smoke", max_len=10, dim=8)
    space = toy_space()
    full = entire.make_setting(space, "A", b, seed=0, device="cpu", min_len=4, progress=False)
    short = entire.make_setting(space, "A", b, seed=0, device="cpu", min_len=4, progress=False, entire_history=5)
    assert short.target.dataset.inter.equals(full.target.dataset.inter)
    assert torch.equal(short.target.data.train_inputs, full.target.data.train_inputs)
    per_user = short.entire.inter.groupby("user").size()
    assert per_user.max() == 5 and len(short.entire.inter) < len(full.entire.inter)
    for raw in short.entire.user_ids:                                  # the most recent five of each user
        f = full.entire.inter[full.entire.inter["user"] == int(np.flatnonzero(full.entire.user_ids == raw)[0])]
        g = short.entire.inter[short.entire.inter["user"] == int(np.flatnonzero(short.entire.user_ids == raw)[0])]
        assert sorted(g["timestamp"]) == sorted(f["timestamp"])[-5:]
    with pytest.raises(ValueError, match="entire_history"):
        entire.make_setting(space, "A", b, seed=0, device="cpu", min_len=4, progress=False, entire_history=0)


def test_one_period_variants_borrow_the_chains_last_teacher():
    """The runs: one chain of teachers (each on its own entire-space cut, built on the one
    before); the one-period variants read its last teacher; target-only reads none."""
    s = _setting()
    cfg = _cfg(n_periods=2, top_m=0.5)
    variants = {k: ecat.VARIANTS[k] for k in ("ECAT", "pre-train + fine-tune", "ECAT one period", "target-only")}
    spec = ecat.runs(s, cfg, variants, label="toy")
    chain = ["toy | teacher 1/2", "toy | teacher 2/2"]
    assert list(spec) == chain + [f"toy | {v}" for v in variants]
    assert spec[chain[1]].inputs == {"previous": chain[0]} and spec[chain[0]].inputs == {}
    assert spec["toy | ECAT"].inputs == {"teacher_0": chain[0], "teacher_1": chain[1]}
    assert spec["toy | ECAT one period"].inputs == spec["toy | pre-train + fine-tune"].inputs == {"teacher_0": chain[1]}
    assert spec["toy | target-only"].inputs == {}
    assert spec[chain[0]].data is ecat.teacher_data(s, 2, cfg.max_teacher_users, s.target.seed)[0]
    out = s.target.run(spec, seeds=[0], lr_grid=(1e-3,))
    stops = ecat.teacher_stops({"toy": [r for r in out if r.variant in chain]})
    assert stops["period"].tolist() == [0, 1] and (stops["steps"] > 0).all()
    assert stops["teachers"].tolist() == ["2 periods"] * 2 and stops["setting"].tolist() == ["toy"] * 2
    assert "2 of 2 teacher trainings ended at a cap" in ecat.teacher_sentence(stops)
    st = out[2].diagnostics["stages"]
    assert st["period"].tolist() == [0, 1] and st["stopped"].str.len().gt(0).all()
    own = ecat.runs(s, replace(cfg, one_period_teacher="own"), variants, label="toy")
    assert "toy | teacher 1/1" in own and own["toy | ECAT one period"].inputs == {"teacher_0": "toy | teacher 1/1"}
    with pytest.raises(ValueError, match="one_period_teacher"):
        ecat.check(replace(cfg, one_period_teacher="mine"))


def test_teacher_sentence_when_every_teacher_converged():
    stops = pd.DataFrame({"setting": ["x", "x"], "teachers": ["2 periods"] * 2, "period": [0, 1], "steps": [5, 9],
                          "best valid NDCG@10": [0.1, 0.2], "stopped": ["early stop (patience 5)"] * 2})
    assert ecat.teacher_sentence(stops) == "Every teacher (2 trainings) stopped early on its validation NDCG@10."


@pytest.mark.parametrize("rule,caps", [("remaining", [10.0, 9.0, 8.0]), ("split", [10 / 3] * 3)])
def test_a_student_period_may_use_what_earlier_periods_left(monkeypatch, rule, caps):
    s = _setting()
    seen, real = [], ecat.periods.train_fit

    def fake(model, data, cfg, hooks=None, groups=None):               # every period "takes" one minute
        seen.append(cfg.max_minutes)
        return replace(real(model, data, cfg, hooks, groups=groups), seconds=60.0)

    monkeypatch.setattr(ecat.periods, "train_fit", fake)
    cfg = _cfg(n_periods=3, top_m=0.5, fine="none", distill="none", period_minutes=rule)
    ecat.continual(s, replace(cfg, train=replace(cfg.train, max_minutes=10.0)), seed=0)
    assert seen == pytest.approx(caps)


def test_ecat_against_reads_each_row_from_ecats_side():
    rows = pd.DataFrame({"variant": ["s | joint", "s | one period", "s | target-only", "s | joint"],
                         "baseline": ["s | ECAT"] * 4, "group": ["all", "all", "all", "tail"],
                         "metric": ["ndcg"] * 4, "k": [10] * 4, "a": [0.48, 0.47, 0.41, 0.5], "b": [0.46, 0.47, 0.46, 0.5],
                         "diff": [0.02, 0.001, -0.05, 0.0], "lo": [0.01, -0.01, -0.06, -0.1], "hi": [0.03, 0.012, -0.04, 0.1]})
    got = ecat.ecat_against(rows, "s")
    assert got == ["ECAT vs joint for all users: NDCG@10 0.4600 vs 0.4800, difference -0.0200, "
                   "95% CI [-0.0300, -0.0100] -- ECAT is worse.",
                   "ECAT vs one period for all users: NDCG@10 0.4700 vs 0.4700, difference -0.0010, "
                   "95% CI [-0.0120, +0.0100] -- no detectable difference."]
    flipped = rows.assign(diff=-rows["diff"], lo=-rows["hi"], hi=-rows["lo"])
    assert ecat.ecat_against(flipped, "s")[0].endswith("95% CI [+0.0100, +0.0300] -- ECAT is better.")
    # with seeds, the seeds' interval must exclude zero too: users alone say better, seeds do not
    # (the rows are variant minus ECAT: seeds [-0.08, +0.05] read as ECAT's [-0.05, +0.08])
    seeded = flipped.assign(seed_lo=[-0.08, 0.0, 0.0, 0.0], seed_hi=[0.05, 0.0, 0.0, 0.0])
    assert ecat.ecat_against(seeded, "s")[0].endswith(
        "95% CI [+0.0100, +0.0300], over seeds [-0.0500, +0.0800] -- no detectable difference.")
    both = flipped.assign(seed_lo=[-0.04, 0.0, 0.0, 0.0], seed_hi=[-0.005, 0.0, 0.0, 0.0])
    assert ecat.ecat_against(both, "s")[0].endswith("over seeds [+0.0050, +0.0400] -- ECAT is better.")
