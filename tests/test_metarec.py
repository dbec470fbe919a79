"""MetaRec mechanisms on tiny cases with hand-computed answers (METHODS.md, MetaRec tests):
the vector quantiser, the shared quantiser across domains, the source weights, the meta-gradient
against autograd, a meta step with meta lr 0, and the helpful/harmful quadratic toy."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from seqtransfer.methods import metarec
from seqtransfer.models import MultiDomainConfig, MultiDomainSASRec, VectorQuantizer, VQConfig, code_usage, perplexity

pytestmark = pytest.mark.unit


def quantiser(codes, **kw) -> VectorQuantizer:
    codes = torch.tensor(codes, dtype=torch.float32)
    vq = VectorQuantizer(codes.shape[1], VQConfig(n_codes=len(codes), **kw))
    with torch.no_grad():
        vq.codebook.copy_(codes)
        if kw.get("ema"):
            vq.ema_sum.copy_(codes)
    return vq


# -- the quantiser ----------------------------------------------------------------------------

def test_nearest_code_and_forward_value_is_the_code():
    vq = quantiser([[0, 0], [10, 10]])
    e = torch.tensor([[1.0, 1.0], [9.0, 8.0]])
    out = vq(e)
    assert out.codes.tolist() == [0, 1]
    assert torch.equal(out.out, torch.tensor([[0.0, 0.0], [10.0, 10.0]]))


def test_straight_through_gradient_is_all_ones_and_codebook_learns_only_from_the_vq_loss():
    vq = quantiser([[0, 0], [10, 10]])
    e = torch.tensor([[1.0, 1.0], [9.0, 8.0]], requires_grad=True)
    out = vq(e)
    out.out.sum().backward()
    assert torch.equal(e.grad, torch.ones(2, 2))
    assert vq.codebook.grad is None or torch.count_nonzero(vq.codebook.grad) == 0
    e.grad = None
    vq(e).loss.backward()
    # d/dC of mean_i ||sg(e_i) - C[c_i]||^2 = 2 (C - e) / M for each assigned code (M = 2 vectors)
    expect = torch.tensor([[2 * (0 - 1) / 2, 2 * (0 - 1) / 2], [2 * (10 - 9) / 2, 2 * (10 - 8) / 2]])
    assert torch.allclose(vq.codebook.grad, expect)
    # the commitment term moves e towards its code: 0.25 * 2 (e - q) / M
    assert torch.allclose(e.grad, 0.25 * torch.tensor([[1.0, 1.0], [-1.0, -2.0]]))


def test_vq_loss_is_codebook_plus_quarter_commitment():
    vq = quantiser([[0, 0]])
    assert vq(torch.tensor([[1.0, 1.0]])).loss.item() == pytest.approx(2 + 0.25 * 2)


def test_ema_with_decay_zero_moves_each_code_to_the_mean_of_its_vectors():
    vq = quantiser([[0, 0], [10, 10], [-50, 50]], ema=True, decay=0.0)
    vq.train()
    e = torch.tensor([[1.0, 1.0], [3.0, 3.0], [9.0, 9.0], [11.0, 7.0]])
    vq(e)
    assert torch.allclose(vq.codebook[0], torch.tensor([2.0, 2.0]))
    assert torch.allclose(vq.codebook[1], torch.tensor([10.0, 8.0]))
    assert torch.equal(vq.codebook[2], torch.tensor([-50.0, 50.0]))     # no vector: unchanged
    assert not any(p is vq.codebook for p in vq.parameters())           # EMA: a buffer, not trained
    with vq.frozen():                                                   # no update inside frozen()
        vq(torch.tensor([[100.0, 100.0]]))
    assert torch.allclose(vq.codebook[1], torch.tensor([10.0, 8.0]))


def test_ema_with_decay_half_over_two_batches_matches_the_hand_computed_average():
    vq = quantiser([[0, 0], [10, 10]], ema=True, decay=0.5)
    vq.train()
    # counts and sums start at one vector on each code: count 1, sum = the code
    vq(torch.tensor([[2.0, 2.0]]))               # count 0.5*1 + 0.5*1 = 1, sum 0.5*[0,0] + 0.5*[2,2]
    assert torch.allclose(vq.codebook[0], torch.tensor([1.0, 1.0]))
    assert torch.allclose(vq.codebook[1], torch.tensor([10.0, 10.0]))   # count 0.5, sum 0.5*[10,10]
    vq(torch.tensor([[4.0, 0.0], [4.0, 0.0]]))   # count 0.5*1 + 0.5*2, sum 0.5*[1,1] + 0.5*[8,0]
    assert torch.allclose(vq.codebook[0], torch.tensor([4.5, 0.5]) / 1.5)


def test_an_ema_update_moves_a_code_between_where_it_was_and_its_vectors():
    """sum / count is a weighted mean of the code and its vectors from the first update on."""
    vq = quantiser([[4.0, 4.0], [-9.0, 9.0]], ema=True, decay=0.9)
    vq.train()
    vq(torch.tensor([[2.0, 2.0], [2.0, 2.0]]))   # (0.9*[4,4] + 0.1*[4,4]) / (0.9 + 0.1*2)
    assert torch.allclose(vq.codebook[0], torch.tensor([4.0, 4.0]) / 1.1)
    assert torch.allclose(vq.codebook[1], torch.tensor([-9.0, 9.0]))    # unassigned: unchanged


def test_the_ema_codebook_does_not_collapse_from_its_default_start():
    """256 codes drawn like the item vectors: after a few EMA updates on those vectors most codes
    are still in use (a zero count under a non-zero sum left about one)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(16, VQConfig(n_codes=256, ema=True))
    vq.train()
    items = torch.randn(2000, 16) * 0.02                               # the codebook's own scale
    before = int((code_usage(vq(items).codes, 256) > 0).sum())
    for _ in range(10):
        vq(items)
    after = int((code_usage(vq.nearest(items), 256) > 0).sum())
    assert before > 200 and after > 0.8 * before


def test_dead_code_is_reseeded_onto_a_batch_vector():
    vq = quantiser([[0, 0], [1000, 1000]], reseed_dead=True, dead_below=0.5, usage_decay=0.0)
    vq.train()
    e = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    vq(e)
    assert any(torch.equal(vq.codebook[1], row) for row in e)
    vq2 = quantiser([[0, 0], [1000, 1000]])                              # option off: stays
    vq2.train()
    vq2(e)
    assert torch.equal(vq2.codebook[1], torch.tensor([1000.0, 1000.0]))


def test_residual_mode_adds_the_code():
    vq = quantiser([[0, 0], [10, 10]], mode="residual")
    e = torch.tensor([[1.0, 1.0], [9.0, 8.0]])
    assert torch.equal(vq(e).out, torch.tensor([[1.0, 1.0], [19.0, 18.0]]))


def test_bad_quantiser_input_is_named():
    with pytest.raises(ValueError, match="mode"):
        VectorQuantizer(2, VQConfig(mode="soft"))
    with pytest.raises(ValueError, match="width 2"):
        quantiser([[0, 0]])(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="codes must lie"):
        code_usage(np.array([0, 4]), 4)


def test_perplexity_of_uniform_use_of_four_codes_is_four():
    counts = code_usage(np.array([0, 1, 2, 3] * 5), 8)
    assert counts.tolist() == [5, 5, 5, 5, 0, 0, 0, 0]
    assert perplexity(counts) == pytest.approx(4.0)
    assert perplexity(code_usage(np.array([2, 2, 2]), 8)) == pytest.approx(1.0)


def test_two_domains_of_different_sizes_share_one_quantiser():
    torch.manual_seed(0)
    model = MultiDomainSASRec({"a": 7, "b": 30}, MultiDomainConfig(dim=8, n_layers=1, max_len=6,
                                                                   vq=VQConfig(n_codes=4)))
    assert len(model.item_codes("a")) == 7 and len(model.item_codes("b")) == 30
    assert int(model.item_codes("b").max()) < 4
    x = torch.tensor([[1, 2, 3, 0, 0, 0]])
    y = torch.tensor([[2, 3, 4, 0, 0, 0]])
    ga = torch.autograd.grad(model.loss(x, y, domain="a"), model.quantizer.codebook)[0]
    gb = torch.autograd.grad(model.loss(x + 20, y + 20, domain="b"), model.quantizer.codebook)[0]
    assert ga.abs().sum() > 0 and gb.abs().sum() > 0            # both domains train the one codebook
    assert sum(isinstance(m, VectorQuantizer) for m in model.modules()) == 1
    # the domain's table feeds the encoder through its codes: moving an item onto another code
    # changes the output, moving it within its code's cell does not
    model.eval()
    h0 = model.encode(x, domain="a")
    with torch.no_grad():
        model.tables["a"].weight[1] += 1e-4 * (model.quantizer.codebook[model.item_codes("a")[0]]
                                                - model.tables["a"].weight[1])
    assert torch.equal(model.encode(x, domain="a"), h0)


# -- source weights and the meta-gradient -----------------------------------------------------

def test_source_weights_follow_the_softmax_formula_and_become_one_hot_as_tau_falls():
    a = np.array([0.2, -0.5, 0.9])
    tau = 0.3
    expect = np.exp(a / tau) / np.exp(a / tau).sum()
    assert np.allclose(metarec.source_weights(a, tau, "descent").numpy(), expect)
    public = np.exp(-a / tau) / np.exp(-a / tau).sum()
    assert np.allclose(metarec.source_weights(a, tau, "public").numpy(), public)
    assert np.allclose(metarec.source_weights(a, 1e-4, "descent").numpy(), [0, 0, 1])
    assert np.allclose(metarec.source_weights(a, 1e-4, "public").numpy(), [0, 1, 0])
    assert np.allclose(metarec.source_weights(a, tau, "uniform").numpy(), 1 / 3)
    with pytest.raises(ValueError, match="tau"):
        metarec.source_weights(a, 0.0)
    with pytest.raises(ValueError, match="weighting"):
        metarec.source_weights(a, 1.0, "abs")


def test_similarity_is_the_mean_cosine_over_tensors():
    a = {"w": torch.tensor([1.0, 0.0]), "v": torch.tensor([[2.0, 0.0]])}
    b = {"w": torch.tensor([1.0, 1.0]), "v": torch.tensor([[-3.0, 0.0]])}
    assert metarec.similarity(a, b) == pytest.approx((2 ** -0.5 - 1) / 2)


def quadratic(center):
    return lambda p: 0.5 * ((p["phi"] - center) ** 2).sum()


def test_quadratic_meta_gradient_first_and_second_order_against_autograd():
    torch.manual_seed(0)
    theta, a, b = torch.randn(3), torch.randn(3), torch.randn(3)
    lr = 0.3
    phi = theta - lr * (theta - a)                                       # one inner step by hand
    g1, fast, _ = metarec.meta_gradient(quadratic(a), quadratic(b), {"phi": theta}, 1, lr, order=1)
    g2, _, _ = metarec.meta_gradient(quadratic(a), quadratic(b), {"phi": theta}, 1, lr, order=2)
    assert torch.allclose(fast["phi"], phi)
    assert torch.allclose(g1["phi"], phi - b)
    assert torch.allclose(g2["phi"], (1 - lr) * (phi - b))
    t = theta.clone().requires_grad_()                                   # autograd through the step
    auto = torch.autograd.grad(quadratic(b)({"phi": t - lr * (t - a)}), t)[0]
    assert torch.allclose(g2["phi"], auto)
    assert not torch.allclose(g1["phi"], auto)


def toy_meta(rule: str, iters: int = 200) -> tuple[float, float]:
    """Quadratic toy: target optimum b = (5, 5); the helpful source's optimum is b itself (its
    update always points down the target loss), the harmful one's is -b. One inner step of lr 0.5,
    meta SGD of lr 0.1, tau 0.1, from theta = (1, -2). Returns (mean weight of the helpful source
    over the iterations, final target loss)."""
    b, helpful, harmful = torch.tensor([5.0, 5.0]), torch.tensor([5.0, 5.0]), torch.tensor([-5.0, -5.0])
    theta = torch.tensor([1.0, -2.0])
    w_help = []
    for _ in range(iters):
        descent = {"phi": -(theta - b)}                                  # -grad of the target loss
        grads, align = [], []
        for c in (helpful, harmful):
            g, fast, _ = metarec.meta_gradient(quadratic(c), quadratic(b), {"phi": theta}, 1, 0.5)
            grads.append(g["phi"])
            align.append(metarec.similarity({"phi": fast["phi"] - theta}, descent))
        w = metarec.source_weights(align, 0.1, rule).float()
        w_help.append(float(w[0]))
        theta = theta - 0.1 * (w[0] * grads[0] + w[1] * grads[1])
    return float(np.mean(w_help)), float(quadratic(b)({"phi": theta}))


def test_helpful_harmful_toy_descent_alignment_weights_the_helpful_source():
    """By hand: phi_s = theta - 0.5 (theta - a_s), so with weight w on the helpful source the
    meta-gradient w (phi_h - b) + (1 - w) (phi_x - b) vanishes at 2b - (w a_h + (1 - w) a_x):
    b under descent alignment (w -> 1, target loss 0); (10, 10) with equal weights (loss 25), where
    MetaAdapt's sign ends too: it starts on the harmful source and only reaches equal weights once
    theta has passed b."""
    w_desc, loss_desc = toy_meta("descent")
    w_pub, loss_pub = toy_meta("public")
    w_uni, loss_uni = toy_meta("uniform")
    assert toy_meta("descent", 1)[0] > 0.99 and toy_meta("public", 1)[0] < 0.01   # first iteration
    assert w_desc > 0.99 and w_pub < 0.5 and w_uni == pytest.approx(0.5)
    assert loss_desc < 1e-4
    assert loss_pub == pytest.approx(25, rel=0.01) and loss_uni == pytest.approx(25, rel=0.01)


# -- a meta iteration on the multi-domain model -----------------------------------------------

def tiny_model(vq=True):
    torch.manual_seed(0)
    cfg = MultiDomainConfig(dim=8, n_layers=1, max_len=5, dropout=0.0, vq=VQConfig(n_codes=4) if vq else None)
    return MultiDomainSASRec({"s1": 9, "s2": 12, metarec.TARGET: 6}, cfg)


def tiny_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for d, n in (("s1", 9), ("s2", 12)):
        x = torch.randint(1, n + 1, (4, 5), generator=g)
        out[d] = type("S", (), {"train_inputs": x[:, :-1].contiguous(), "train_targets": x[:, 1:].contiguous(),
                                "device": torch.device("cpu")})()
    xt = torch.randint(1, 7, (4, 5), generator=g)
    return out, (xt[:, :-1], xt[:, 1:])


@pytest.mark.parametrize("order", [1, 2])
def test_meta_step_with_meta_lr_zero_leaves_the_shared_weights_bit_identical(order):
    model = tiny_model()
    sources, target = tiny_batches()
    cfg = metarec.MetaRecConfig(order=order, inner_steps=2, n_sampled=2)
    keep = [n for n in model.shared_names()] + [model.table_name(metarec.TARGET)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    rows = metarec.meta_iteration(model, opt, target, metarec.DomainBatches(sources, 3, 0), cfg)
    after = dict(model.named_parameters())
    for n in keep:
        assert torch.equal(after[n], before[n]), n
    assert not torch.equal(after["tables.s1.weight"], before["tables.s1.weight"])   # its own table adapts
    assert sum(r["weight"] for r in rows) == pytest.approx(1.0)
    # a positive meta lr moves them
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    metarec.meta_iteration(model, opt, target, metarec.DomainBatches(sources, 3, 0), cfg)
    assert not torch.equal(dict(model.named_parameters())["blocks.0.ffn.0.weight"], before["blocks.0.ffn.0.weight"])


def test_a_source_that_is_the_target_has_alignment_one_and_descent_weights_it():
    """A source with the target's table and batches: its inner step is -lr * grad L_target on the
    shared weights (exactly, for one step), so its update is the target's descent direction
    (alignment 1) and its meta-gradient one small step away is close to the target gradient."""
    torch.manual_seed(0)
    cfg_m = MultiDomainConfig(dim=8, n_layers=1, max_len=5, dropout=0.0, vq=None)
    model = MultiDomainSASRec({"same": 6, "other": 6, metarec.TARGET: 6}, cfg_m)
    with torch.no_grad():
        model.tables["same"].weight.copy_(model.tables[metarec.TARGET].weight)
    _, target = tiny_batches(2)
    other = torch.randint(1, 7, (4, 5), generator=torch.Generator().manual_seed(9))
    mk = lambda x, y: type("S", (), {"train_inputs": x, "train_targets": y, "device": torch.device("cpu")})()  # noqa: E731
    batches = metarec.DomainBatches({"same": mk(*target), "other": mk(other[:, :-1], other[:, 1:])}, 4, 0)
    cfg = metarec.MetaRecConfig(n_sampled=2, inner_lr=0.01, tau=0.05)

    class Fixed(metarec.DomainBatches):                     # every batch is the domain's 4 rows
        def __call__(self, d):
            s = self.sources[d]
            return s.train_inputs, s.train_targets
    fixed = Fixed(batches.sources, 4, 0)
    rows = {r["source"]: r for r in metarec.meta_iteration(model, torch.optim.SGD(model.parameters(), lr=0.0),
                                                            target, fixed, cfg, domains=["same", "other"])}
    assert rows["same"]["alignment"] == pytest.approx(1.0, abs=1e-3)
    assert rows["same"]["grad_cosine"] == pytest.approx(1.0, abs=1e-2)
    assert rows["same"]["alignment"] > rows["other"]["alignment"]
    assert rows["same"]["weight"] > rows["other"]["weight"]
    # the pairwise cosine of the two sources' meta-gradients, and the weights' spread
    assert rows["same"]["pair_cosine"] == pytest.approx(rows["other"]["pair_cosine"])
    assert -1.0 <= rows["same"]["pair_cosine"] < 1 - 1e-5   # 0.9993 here: alike, not identical
    assert rows["same"]["weight_spread"] == pytest.approx(rows["same"]["weight"] - rows["other"]["weight"])


def test_pair_cosine_is_one_for_two_copies_of_one_source():
    """Two sources with the same table and the same batches have the same meta-gradient: pair
    cosine 1 (and equal weights, spread 0): the case where source weighting can move nothing."""
    torch.manual_seed(0)
    cfg_m = MultiDomainConfig(dim=8, n_layers=1, max_len=5, dropout=0.0, vq=None)
    model = MultiDomainSASRec({"a": 6, "b": 6, metarec.TARGET: 6}, cfg_m)
    with torch.no_grad():
        model.tables["b"].weight.copy_(model.tables["a"].weight)
    _, target = tiny_batches(2)
    x = torch.randint(1, 7, (4, 5), generator=torch.Generator().manual_seed(3))
    mk = lambda: type("S", (), {"train_inputs": x[:, :-1], "train_targets": x[:, 1:], "device": torch.device("cpu")})()  # noqa: E731

    class Fixed(metarec.DomainBatches):
        def __call__(self, d):
            s = self.sources[d]
            return s.train_inputs, s.train_targets
    rows = metarec.meta_iteration(model, torch.optim.SGD(model.parameters(), lr=0.0), target,
                                  Fixed({"a": mk(), "b": mk()}, 4, 0), metarec.MetaRecConfig(n_sampled=2),
                                  domains=["a", "b"])
    assert [r["pair_cosine"] for r in rows] == [pytest.approx(1.0, abs=1e-5)] * 2
    assert rows[0]["weight_spread"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("rule", ["uniform", "descent"])
def test_meta_iteration_applies_the_weighted_sum_of_meta_gradients(rule):
    """With plain SGD and lr 1, the shared weights move by exactly sum_s w_s g_s, with the
    weights the iteration computed (unequal under descent at a small tau: an update that took
    the plain mean, or dropped the weights, fails)."""
    model = tiny_model(vq=False)
    sources, target = tiny_batches(1)
    cfg = metarec.MetaRecConfig(n_sampled=2, weights=rule, inner_steps=1, tau=0.01)
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    rows = metarec.meta_iteration(model, opt, target, metarec.DomainBatches(sources, 3, 0), cfg)
    w = {r["source"]: r["weight"] for r in rows}
    if rule == "uniform":
        assert list(w.values()) == [0.5, 0.5]
    else:
        assert abs(rows[0]["weight"] - rows[1]["weight"]) > 0.05
    # recompute each source's first-order meta-gradient by hand from the reference copy
    batches = metarec.DomainBatches(sources, 3, 0)
    doms = batches.sample_domains(2)
    name = "blocks.0.ffn.0.weight"
    expect = torch.zeros_like(dict(ref.named_parameters())[name])
    for d in doms:
        src = copy.deepcopy(ref)
        x, y = batches(d)
        params = dict(src.named_parameters())
        g = torch.autograd.grad(src.loss(x, y, domain=d), list(params.values()), allow_unused=True)
        with torch.no_grad():
            for (n, p), gi in zip(params.items(), g):
                if gi is not None and (n in src.shared_names() or n == src.table_name(d)):
                    p -= cfg.inner_lr * gi
        gt = torch.autograd.grad(src.loss(*target, domain=metarec.TARGET), dict(src.named_parameters())[name])[0]
        expect += w[d] * gt
    moved = dict(ref.named_parameters())[name] - dict(model.named_parameters())[name]
    assert torch.allclose(moved, expect, atol=1e-6)


def test_multi_domain_model_names_bad_domains():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown domain 'nope'"):
        model.set_domain("nope")
    with pytest.raises(ValueError, match="already has a table"):
        model.add_domain("s1", 3)
    with pytest.raises(ValueError, match="contain no '.'"):
        model.add_domain("a.b", 3)
    with pytest.raises(ValueError, match="no quantiser"):
        tiny_model(vq=False).item_codes("s1")
    with pytest.raises(ValueError, match="exceeds max_len"):
        model.encode(torch.ones(1, 9, dtype=torch.long), domain="s1")
    model.set_domain("s2")                                       # the contract follows the domain
    assert model.n_items == 12 and model.score(torch.zeros(2, 8)).shape == (2, 13)
    x = torch.tensor([[1, 2, 3, 0]])
    assert model.represent(x, torch.tensor([3]), None).shape == (1, 8)   # main's users argument
    assert model.position_losses(x, torch.tensor([[2, 3, 4, 0]]), None).shape == (1, 4)


def test_target_items_start_on_the_codes_the_sources_use_in_proportion_to_their_use():
    torch.manual_seed(0)
    model = MultiDomainSASRec({"s": 6}, MultiDomainConfig(dim=4, n_layers=1, max_len=6, vq=VQConfig(n_codes=4)))
    codes = torch.tensor([[.5, 0, 0, 0], [0, .5, 0, 0], [-.5, 0, 0, 0], [.01, .01, .01, .01]])
    with torch.no_grad():
        model.quantizer.codebook.copy_(codes)
        model.tables["s"].weight[1:] = codes[[0, 0, 0, 0, 1, 1]] + 0.01       # 4 items on code 0, 2 on code 1
    model.add_domain("t", 3000)
    # the failure this fixes: a fresh N(0, 0.02^2) table sits on the small code no source uses
    assert set(model.item_codes("t").tolist()) == {3}
    drawn = metarec.init_on_codes(model, "t", ["s"], noise=0.002, seed=1)
    got = model.item_codes("t")
    assert torch.equal(got, drawn)                                   # each item sits on its drawn code
    assert set(got.tolist()) <= {0, 1}                               # only codes the source uses
    assert abs(float((got == 0).float().mean()) - 4 / 6) < 0.03      # drawn by the source's usage
    w = model.tables["t"].weight.detach()
    assert float(w[0].abs().sum()) == 0.0                            # padding row untouched
    assert len(torch.unique(w[1:], dim=0)) == 3000                   # the noise tells items apart
    again = MultiDomainSASRec({"s": 6}, model.cfg)
    again.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("tables.t")}, strict=False)
    again.add_domain("t", 3000)
    assert torch.equal(metarec.init_on_codes(again, "t", ["s"], noise=0.002, seed=1), drawn)   # seeded
    with pytest.raises(ValueError, match="quantiser"):
        metarec.init_on_codes(MultiDomainSASRec({"s": 3}, MultiDomainConfig(dim=4, n_layers=1, vq=None)), "s", ["s"])
