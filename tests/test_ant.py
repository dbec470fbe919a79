"""ANT's mechanisms on tiny cases with hand-computed answers (METHODS.md): the uniform gate, the
gate on the raw feature, fusion, the masked contrastive loss, cosine scores, and what each
adaptation variant does to a pre-trained model (through real optimiser steps)."""
import copy
import math

import numpy as np
import pytest
import torch

from seqtransfer import data
from seqtransfer.data.features import ItemFeatures
from seqtransfer.methods import ant
from seqtransfer.models import ContentConfig, ContentSASRec, MoEAdaptor, masked_contrastive_loss
from seqtransfer.train import TrainConfig

pytestmark = pytest.mark.unit


def _adaptor():
    a = MoEAdaptor(2, 1, n_experts=2, expert="whiten", dropout=0.0)
    with torch.no_grad():
        a.experts[0].W.weight.copy_(torch.tensor([[1.0, 2.0]]))
        a.experts[1].W.weight.copy_(torch.tensor([[3.0, 4.0]]))
    return a


def test_uniform_gate_gives_mean_of_experts():
    a = _adaptor().eval()
    x = torch.tensor([[1.0, 1.0]])
    # experts: 1 + 2 = 3 and 3 + 4 = 7; G = 0 -> weights 1/2 each -> 5
    assert a.gate(x).tolist() == [[0.5, 0.5]]
    assert a(x).item() == pytest.approx(5.0)


def test_batched_experts_are_the_per_expert_layers():
    # the batched whitening experts compute W_e (x - b_e) of every expert exactly as ANT's
    # per-expert layers do: outputs and every gradient, with and without the noisy gate; a hand
    # case first: experts [1, 2] and [3, 4], centres b_0 = [1, 0] and b_1 = [0, 1], x = [1, 1]
    a = _adaptor().eval()
    with torch.no_grad():
        a.experts[0].b.copy_(torch.tensor([1.0, 0.0]))
        a.experts[1].b.copy_(torch.tensor([0.0, 1.0]))
    assert a.whiten_all(torch.tensor([[1.0, 1.0]])).tolist() == [[[2.0], [3.0]]]   # 1*0 + 2*1, 3*1 + 4*0
    torch.manual_seed(0)
    a = MoEAdaptor(6, 3, n_experts=4, expert="whiten", dropout=0.0)
    with torch.no_grad():
        for e in a.experts:
            e.b.normal_()
        a.G.normal_()
        a.N.normal_()
    x = torch.randn(2, 5, 6)
    for training in (False, True):
        a.train(training)
        out = {}
        for fused in (True, False):
            a.fused = fused
            a.zero_grad()
            torch.manual_seed(1)                       # the gate's noise: the same draw both ways
            y = a(x)
            (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
            out[fused] = (y.detach(), [p.grad.clone() for p in a.parameters() if p.grad is not None])
        torch.testing.assert_close(out[True][0], out[False][0])
        assert len(out[True][1]) == len(out[False][1])
        for g1, g2 in zip(out[True][1], out[False][1]):
            torch.testing.assert_close(g1, g2)


def test_batched_expert_dropout_masks_are_independent_and_unbiased():
    # every expert draws its own inverted-dropout mask: with identical experts the outputs differ
    # between experts, each keeps about 1 - p of the inputs, and the mean over draws is the
    # eval output
    torch.manual_seed(0)
    p, d_in = 0.3, 400
    a = MoEAdaptor(d_in, 1, n_experts=3, expert="whiten", dropout=p)
    with torch.no_grad():
        for e in a.experts:
            e.W.weight.fill_(1.0)
    x = torch.ones(1, d_in)
    a.train()
    z = a.whiten_all(x)[0, :, 0]                       # (E,): (number kept) / (1 - p) per expert
    kept = z * (1 - p)
    assert torch.allclose(kept, kept.round(), atol=1e-3)
    assert len(set(kept.round().tolist())) == 3        # three different masks
    assert ((kept / d_in - (1 - p)).abs() < 0.08).all()
    draws = torch.stack([a.whiten_all(x)[0, :, 0] for _ in range(300)])
    a.eval()
    assert torch.allclose(draws.mean(0), a.whiten_all(x)[0, :, 0], rtol=0.01)
    with pytest.raises(ValueError, match="dropout must be in"):
        MoEAdaptor(4, 2, dropout=1.0)


def test_gate_reads_raw_feature():
    a = _adaptor().eval()
    with torch.no_grad():
        a.G.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 1.0]])
    g = a.gate(x).detach()
    # logits x G = [1, 2] -> softmax
    np.testing.assert_allclose(g[0].numpy(), [1 / (1 + math.e), math.e / (1 + math.e)], rtol=1e-6)
    before = a(x).item()
    with torch.no_grad():
        a.experts[0].b.fill_(1.0)         # whitening centre moves: expert output changes ...
    assert torch.equal(a.gate(x), g)      # ... the gate does not (it reads x, not x - b)
    assert a(x).item() == pytest.approx(before - g[0, 0].item() * 3.0)


def test_fusion_beta_zero_is_plain_sum():
    feats = {"text": torch.randn(4, 3), "categorical": torch.rand(4, 2)}
    z = {"text": torch.tensor([[1.0, 2.0]]), "categorical": torch.tensor([[3.0, 5.0]])}
    m0 = ContentSASRec(feats, ContentConfig(dim=2, n_heads=1, beta=0.0))
    assert torch.equal(m0.fuse(z), torch.tensor([[4.0, 7.0]]))
    m1 = ContentSASRec(feats, ContentConfig(dim=2, n_heads=1, beta=0.1))
    np.testing.assert_allclose(m1.fuse(z).detach().numpy(), [[4.0 + 0.3, 7.0 + 1.0]], rtol=1e-6)


def test_masked_contrastive_loss_hand_value():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    h = torch.stack([e1, e2, e1])
    v = torch.stack([e1, e2, e2])
    # cosines h_i . v_j: [[1,0,0],[0,1,1],[1,0,0]]; targets [5,5,7] mask (0,1) and (1,0)
    loss = masked_contrastive_loss(h, v, torch.tensor([5, 5, 7]), temperature=1.0)
    row0 = math.log(1 + math.exp(-1))          # [1, -inf, 0], label 0
    row1 = math.log(2)                         # [-inf, 1, 1], label 1
    row2 = math.log(math.e + 2)                # [1, 0, 0], label 2
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-6)
    unmasked = masked_contrastive_loss(h, v, torch.tensor([5, 6, 7]), temperature=1.0)
    assert unmasked.item() == pytest.approx((math.log(2 + math.e) - 1 + math.log(1 + 2 * math.e) - 1 + row2) / 3, rel=1e-6)


def test_scores_are_cosine_over_temperature():
    m = ContentSASRec({"text": torch.randn(4, 3)}, ContentConfig(dim=2, n_heads=1, temperature=0.5)).eval()
    h = torch.tensor([[3.0, 4.0]])
    w = m.item_weights().detach()
    expect = (w[1:] @ torch.tensor([0.6, 0.8])) / w[1:].norm(dim=1) / 0.5
    s = m.score(h)
    assert s[0, 0] == float("-inf")
    np.testing.assert_allclose(s[0, 1:].detach().numpy(), expect.numpy(), rtol=1e-5)


# ---- adaptation variants ----------------------------------------------------------------------

def _model(seed=0, n_items=6):
    torch.manual_seed(seed)
    feats = {"text": torch.randn(n_items + 1, 5), "categorical": (torch.rand(n_items + 1, 3) > 0.5).float()}
    feats = {k: torch.cat([torch.zeros(1, v.shape[1]), v[1:]]) for k, v in feats.items()}
    return ContentSASRec(feats, ContentConfig(dim=8, n_heads=2, max_len=4, dropout=0.0, n_experts=3))


def _perturb(model, scale=0.3):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def _state(modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def _one_step(model):
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    seqs, tgt = torch.tensor([[1, 2, 3, 0], [4, 5, 6, 1]]), torch.tensor([[2, 3, 4, 0], [5, 6, 1, 2]])
    model.train()
    model.loss(seqs, tgt).backward()
    opt.step()


def test_relearn_resets_exactly_and_keeps_transformer_frozen():
    pre = _perturb(_model())                   # a "pre-trained" model: every value moved
    m = ant.relearn(copy.deepcopy(pre), seed=3)
    for a, b in zip(_state(pre.transformer_modules()), _state(m.transformer_modules())):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for mod in m.transformer_modules() for p in mod.parameters())
    assert torch.equal(pre.input_ln.weight, m.input_ln.weight) and m.input_ln.weight.requires_grad
    for s in m.slots:
        a = m.adaptors[s]
        assert torch.count_nonzero(a.G) == 0 and torch.count_nonzero(a.N) == 0
        assert all(torch.count_nonzero(e.b) == 0 for e in a.experts)
    gen = torch.Generator().manual_seed(3)
    expect_pos = torch.nn.init.normal_(torch.empty_like(m.pos_emb.weight), std=0.02, generator=gen)
    assert torch.equal(m.pos_emb.weight, expect_pos)           # positions from the seed alone
    # same transformer, different adaptors -> the same re-learning state under one seed
    other = copy.deepcopy(pre)
    with torch.no_grad():
        for p in other.adaptors.parameters():
            p.add_(1.0)
        other.pos_emb.weight.mul_(3)
    m2 = ant.relearn(other, seed=3)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    # an optimiser step (with weight decay) moves the rest and leaves the transformer bit-identical
    before = _state([m.input_ln, m.pos_emb, m.adaptors])
    _one_step(m)
    for a, b in zip(_state(pre.transformer_modules()), _state(m.transformer_modules())):
        assert torch.equal(a, b)
    after = _state([m.input_ln, m.pos_emb, m.adaptors])
    assert all(not torch.equal(a, b) for a, b in zip(before[:3], after[:3]))


def test_fine_tune_keeps_every_value_and_adaptor_tune_freezes_encoder():
    pre = _perturb(_model())
    ft = ant.fine_tune(copy.deepcopy(pre))
    for (k, a), (_, b) in zip(pre.state_dict().items(), ft.state_dict().items()):
        assert torch.equal(a, b), k
    assert all(p.requires_grad for p in ft.parameters())
    at = ant.adaptor_tune(copy.deepcopy(pre))
    for (k, a), (_, b) in zip(pre.state_dict().items(), at.state_dict().items()):
        assert torch.equal(a, b), k
    frozen = [*at.transformer_modules(), at.pos_emb]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in at.adaptors.parameters())
    _one_step(at)
    for a, b in zip(_state([*pre.transformer_modules(), pre.pos_emb]), _state(frozen)):
        assert torch.equal(a, b)
    sc = ant.scratch(pre, seed=5)
    fresh = ant.scratch(_model(seed=1), seed=5)              # depends on the seed, not the weights
    assert torch.equal(sc.pos_emb.weight, fresh.pos_emb.weight)
    assert not torch.equal(sc.pos_emb.weight, pre.pos_emb.weight)


def test_set_items_swaps_domain_and_rejects_bad_widths():
    m = _model()
    m.set_items({"text": torch.randn(10, 5)})                 # a target with text only, 9 items
    assert m.n_items == 9 and m.active == ["text"]
    assert m.score(torch.randn(2, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="width 4"):
        m.set_items({"text": torch.randn(10, 4)})
    with pytest.raises(ValueError, match="no adaptor"):
        m.set_items({"image": torch.randn(10, 5)})


# ---- the method end to end on a toy setting, through the shared loop ---------------------------------

def _toy_data(toy_csv):
    ds = data.load(toy_csv, min_user=1, min_item=1)
    seqs = data.build_sequences(data.leave_one_out(ds), max_len=6)
    rng = np.random.default_rng(0)
    mats = {"text": rng.normal(size=(ds.n_items + 1, 6)).astype(np.float32),
            "categorical": (rng.random((ds.n_items + 1, 3)) > 0.5).astype(np.float32)}
    for v in mats.values():
        v[0] = 0
    feats = ItemFeatures(mats, {"text": "random", "categorical": "random"})
    groups = data.activeness_groups(seqs.activeness)
    return seqs, feats, groups


def test_pretrain_and_each_variant_through_the_shared_loop(toy_csv):
    seqs, feats, groups = _toy_data(toy_csv)
    tc = TrainConfig(epochs=1, max_steps=2, batch_size=8, device="cpu", progress=False)
    cfg = ant.AntConfig(model=ContentConfig(dim=8, n_heads=2, max_len=6, n_experts=2),
                        slots=("text", "categorical"), pretrain=tc, train=tc)
    pre = ant.pretrain(seqs, None, cfg, seed=0, features=feats)
    assert pre.history["loss"].notna().all() and set(pre.metrics["split"]) == {"valid", "test"}
    target = feats.select(["text"])                          # the target has text only
    for variant in ant.VARIANTS:
        r = ant.fit(seqs, groups, replace_variant(cfg, variant), seed=0, pretrained=pre, features=target)
        assert r.variant == f"ANT {variant}" and np.isfinite(r.ndcg10())
        assert set(r.diagnostics["gates"]["slot"]) == {"text"}
        if variant == "re-learn":                              # frozen through the real loop
            for a, b in zip(_state(pre.model.transformer_modules()), _state(r.model.transformer_modules())):
                assert torch.equal(a.cpu(), b.cpu())
    with pytest.raises(ValueError, match="pretrained"):
        ant.fit(seqs, groups, replace_variant(cfg, "re-learn"), features=target)
    with pytest.raises(ValueError, match="unknown ANT variant"):
        ant.fit(seqs, groups, replace_variant(cfg, "freeze-all"), pretrained=pre, features=target)


def replace_variant(cfg, variant):
    from dataclasses import replace
    return replace(cfg, variant=variant)


def _transfer(toy_csv, tmp_path, lr_grid=(1e-3, 3e-3), cache=True, n_seeds=2, **kw):
    """A toy transfer setting: sources and target are the same toy tensors (the wiring is under
    test, not the transfer), the target's features text only, a two-point grid, two seeds."""
    from seqtransfer.budget import get_budget
    from seqtransfer.experiment import Transfer, prepare
    seqs, feats, _ = _toy_data(toy_csv)
    ds = data.load(toy_csv, min_user=1, min_item=1)
    exp = prepare(ds, get_budget("smoke", max_len=6, dim=8, lr_grid=lr_grid, n_seeds=n_seeds), seed=0,
                  device="cpu", progress=False, cache=str(tmp_path / "runs") if cache else False, **kw)
    setting = data.CrossDomain("toy -> toy", "cross-platform", ds, ds, 1.0)
    tc = exp.train_config(max_steps=2, epochs=5, patience=10, lr=2e-3)
    cfg = ant.AntConfig(model=ContentConfig(dim=8, n_heads=2, max_len=6, n_experts=2),
                        slots=("text", "categorical"), pretrain=tc, train=tc)
    return Transfer(setting, seqs, feats, exp, feats.select(["text"]), {"data": 0.0}), cfg


def test_runs_tune_every_arm_seed_every_arm_and_pretrain_once(toy_csv, tmp_path):
    prep, cfg = _transfer(toy_csv, tmp_path)
    spec = ant.runs(prep, cfg, variants=("scratch", "re-learn"), label="a")
    pre = ant.pretrain_name(prep.setting)
    assert list(spec) == [pre, "a | ANT scratch", "a | ANT re-learn"]
    out = prep.target.run(spec)
    # the pre-training: one seed, its own one-value grid (the sources' validation decides
    # nothing between rates it was not given); each arm: the budget's grid, both seeds
    assert [(r.variant, r.seed) for r in out] == [(pre, 0), ("a | ANT scratch", 0), ("a | ANT scratch", 1),
                                                  ("a | ANT re-learn", 0), ("a | ANT re-learn", 1)]
    assert len(out[0].tuning) == 1 and out[0].lr == 2e-3
    for r in out[1:]:
        assert list(r.tuning["lr"]) == [1e-3, 3e-3] and r.lr in (1e-3, 3e-3)
    # every seed of re-learn starts from the one pre-trained model: its frozen transformer
    for r in out[3:]:
        for a, b in zip(_state(out[0].model.transformer_modules()), _state(r.model.transformer_modules())):
            assert torch.equal(a.cpu(), b.cpu())
    # a second setting with the same sources (another label, its own target schedule) finds the
    # pre-training cached: its key holds no target schedule
    from dataclasses import replace
    b_cfg = replace(cfg, train=replace(cfg.train, patience=3))
    again = prep.target.run(ant.runs(prep, b_cfg, variants=("re-learn",), label="b"))
    assert again[0].train.seconds == out[0].train.seconds      # loaded, not re-trained
    # an ablation row pre-trains anew under its own name
    abl = prep.target.run(ant.ablation_runs(prep, cfg, label="a", specs={"no product": {"beta": 0.0}}), seeds=[0])
    assert [r.variant for r in abl] == ["a | ANT pre-train [no product]", "a | ANT re-learn [no product]"]
    assert abl[1].model.cfg.beta == 0.0 and abl[0].model.cfg.beta == 0.0
    table = ant.cutoff_table(out[1:], ks=(10, 50))
    assert list(table.columns) == ["NDCG@10", "HR@10", "NDCG@50", "HR@50"]
    assert (table["HR@10"] <= table["HR@50"]).all()
    times = ant.stage_times(out + again, {"a": prep})
    assert (times["stage"] == "pre-train").sum() == 1          # a shared pre-training counted once
    # every grid point is timed: per arm the kept run of each seed and the first seed's other rate
    search = times[times["stage"] == "lr search"]
    assert len(search) == 3 and search["seconds"].notna().all()
    assert set(search["variant"].str.split(" \\(lr").str[0]) == {"a | ANT scratch", "a | ANT re-learn",
                                                                "b | ANT re-learn"}


def test_the_pretraining_sees_only_the_sources(toy_csv, tmp_path):
    """Wiring: the pre-training run trains and validates on the source tensors it is given,
    never on the target's: changing the target leaves it bit-identical, changing the sources
    does not."""
    from dataclasses import replace
    prep, cfg = _transfer(toy_csv, tmp_path, cache=False, n_seeds=1)
    pre = ant.pretrain_name(prep.setting)
    first = prep.target.run({pre: ant.runs(prep, cfg)[pre]})[0]
    other = replace(prep.target, data=replace(prep.target.data, train_inputs=prep.target.data.train_inputs.flip(1)))
    same = other.run({pre: ant.runs(prep, cfg)[pre]})[0]
    for a, b in zip(first.model.state_dict().values(), same.model.state_dict().values()):
        assert torch.equal(a, b)
    changed = replace(prep, source=replace(prep.source, train_inputs=prep.source.train_inputs.flip(1)))
    moved = prep.target.run({pre: ant.runs(changed, cfg)[pre]})[0]
    assert any(not torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                     moved.model.state_dict().values()))


def test_adapting_one_variant_leaves_the_shared_pretrained_model_alone(toy_csv, tmp_path):
    """Wiring: fine-tune trains every weight of its copy; the pre-trained result the next
    variant starts from is unchanged, so re-learn after fine-tune equals re-learn alone."""
    prep, cfg = _transfer(toy_csv, tmp_path, lr_grid=(3e-3,), cache=False, n_seeds=1)
    pre = ant.pretrain_name(prep.setting)
    both = prep.target.run(ant.runs(prep, cfg, variants=("fine-tune", "re-learn")))
    before = {k: v.clone() for k, v in both[0].model.state_dict().items()}
    alone = prep.target.run({pre: ant.runs(prep, cfg)[pre], "ANT re-learn": ant.runs(prep, cfg)["ANT re-learn"]})
    for k, v in both[0].model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for a, b in zip(both[2].model.state_dict().values(), alone[1].model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    tuned = [p for p in both[1].model.parameters() if p.requires_grad]
    assert tuned and all(p.requires_grad for p in both[1].model.transformer_modules()[0].parameters())


def test_eval_sample_keeps_the_chosen_users_rows(toy_csv):
    seqs, _, _ = _toy_data(toy_csv)
    small = data.eval_sample(seqs, 5, seed=1)
    keep = np.sort(np.random.default_rng(1).choice(seqs.n_users, 5, replace=False))
    assert small.n_users == 5 and torch.equal(small.train_inputs, seqs.train_inputs)
    for split in ("valid", "test"):
        assert torch.equal(small.eval_targets[split], seqs.eval_targets[split][keep])
        for i, u in enumerate(keep):
            p, q = small.history_ptr[split], seqs.history_ptr[split]
            assert torch.equal(small.history_items[split][p[i]:p[i + 1]], seqs.history_items[split][q[u]:q[u + 1]])
    from seqtransfer.evaluate import rank_targets
    model = ContentSASRec({"text": torch.randn(seqs.n_items + 1, 4)}, ContentConfig(dim=8, max_len=6))
    np.testing.assert_array_equal(rank_targets(model, small, "test"), rank_targets(model, seqs, "test")[keep])


def test_contrastive_step_equals_the_loss_on_the_full_item_table(toy_csv):
    """The step runs the adaptors only on the batch's items; its loss must equal the one
    computed with every item's vector (no dropout, no gate noise: eval mode)."""
    from contextlib import nullcontext
    from seqtransfer.train import StepContext
    seqs, feats, _ = _toy_data(toy_csv)
    cfg = ant.AntConfig(model=ContentConfig(dim=8, n_heads=2, max_len=6, n_experts=2),
                        slots=("text", "categorical"), cross_modal_weight=0.5, max_positions=10_000)
    model = _perturb(ant.build(feats, cfg, seed=0)).eval()
    batch = torch.arange(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    got = ant.contrastive_step(cfg)(StepContext(model, opt, seqs, batch, 0, 0, TrainConfig(grad_clip=None), nullcontext))
    with torch.no_grad():
        s, t = seqs.train_inputs[batch], seqs.train_targets[batch]
        full = model.item_weights()
        h = model.encode(s, table=full)[t > 0]
        tm = t[t > 0]
        z = model.modality_vectors(torch.arange(seqs.n_items + 1))
        items = torch.unique(tm)
        expect = masked_contrastive_loss(h, full[tm], tm) + \
            0.5 * masked_contrastive_loss(z["text"][items], z["categorical"][items], items)
    assert got == pytest.approx(expect.item(), rel=1e-5)


def test_transductive_mode_adds_an_id_embedding_per_domain():
    feats = {"text": torch.randn(5, 3)}
    m = ContentSASRec(feats, ContentConfig(dim=4, n_heads=1, transductive=True)).eval()
    plain = ContentSASRec(feats, ContentConfig(dim=4, n_heads=1)).eval()
    assert plain.item_emb is None
    content = m.fuse(m.modality_vectors(torch.arange(5)))
    torch.testing.assert_close(m.item_weights(), content + m.item_emb.weight)
    assert torch.count_nonzero(m.item_emb.weight[0]) == 0
    m.set_items({"text": torch.randn(9, 3)})                  # a new domain: a new id table
    assert m.item_emb.num_embeddings == 9 and m.item_weights().shape == (9, 4)


def test_check_variants_names_the_problem_and_quick_keeps_ants_own_arms():
    assert ant.check_variants(["scratch", "re-learn"]) == ["scratch", "re-learn"]
    assert set(ant.VARIANTS_QUICK) == set(ant.VARIANTS) - {"adaptor-tune"}
    with pytest.raises(ValueError, match="unknown ANT variant"):
        ant.check_variants(["scratch", "relearn"])
    with pytest.raises(ValueError, match="leave out 'scratch'"):
        ant.check_variants(["fine-tune"])
    with pytest.raises(ValueError, match="repeat"):
        ant.check_variants(["scratch", "scratch"])
