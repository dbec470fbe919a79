"""MetaRec on the run engine, on a toy setting: every spec as a run of ``Experiment.run`` with
the pre-trainings as runs of their own, and the wiring between stages: the pre-training sees only
the sources and early-stops on their validation, an arm never changes the pre-trained model it
starts from, a killed arm resumes exactly, and the EMA codebook moves only in the pass at the
real weights (never inside a source's fast-weight copy)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from seqtransfer import data, experiment
from seqtransfer.budget import get_budget
from seqtransfer.experiment import prepare
from seqtransfer.methods import metarec, stopped_by_cap
from seqtransfer.models import MultiDomainConfig, VQConfig
from seqtransfer.train import TrainConfig

pytestmark = pytest.mark.unit


def _sources(ds, flip: str = ""):
    """Three toy source domains from one dataset: the same users, items cut differently."""
    base = data.build_sequences(data.leave_one_out(ds), max_len=6)
    out = {"s1": base, "s2": replace(base, train_inputs=base.train_inputs.flip(0), train_targets=base.train_targets.flip(0)),
           "s3": base}
    if flip:
        out[flip] = replace(out[flip], train_inputs=out[flip].train_inputs.roll(1, 1))
    return out


def toy_prep(toy_csv, tmp_path=None, flip: str = "", **kw) -> experiment.Domains:
    ds = data.load(toy_csv, min_user=1, min_item=1)
    b = get_budget("smoke", max_len=6, dim=8, lr_grid=(1e-3, 3e-3), n_seeds=2)
    exp = prepare(ds, b, seed=0, device="cpu", progress=False, cache=tmp_path or False, **kw)
    return experiment.Domains(None, _sources(ds, flip), {d: ds.items for d in ("s1", "s2", "s3")}, exp, {"data": 0.0})


def toy_cfg(exp, **kw):
    train = exp.train_config(max_steps=None, epochs=3, patience=10, batch_size=8)
    return metarec.MetaRecConfig(model=MultiDomainConfig(dim=8, n_layers=1, max_len=6, vq=VQConfig(n_codes=8)),
                                 train=train, pretrain=replace(train, epochs=2, lr=2e-3), n_sampled=2,
                                 snapshot_every=1, **kw)


def test_every_spec_runs_on_the_engine_with_one_pretraining_per_codebook(toy_csv, tmp_path):
    prep = toy_prep(toy_csv, tmp_path)
    cfg = toy_cfg(prep.target)
    spec = metarec.runs(prep, cfg, label="a")
    pre_vq, pre_novq = (metarec.pretrain_name(prep.sources, v) for v in (True, False))
    assert list(spec) == [pre_vq, pre_novq] + [f"a | {v}" for v in metarec.SPECS]
    assert spec["a | MetaRec"].inputs == {"pretrained": pre_vq}
    assert spec["a | MetaRec, no VQ"].inputs == {"pretrained": pre_novq}
    assert spec["a | joint (VQ)"].inputs == {} and "sources" in spec["a | joint (VQ)"].given
    assert "sources" not in spec["a | pre-train + fine-tune"].given        # fine-tune sees the target only
    out = prep.target.run(spec)
    # each pre-training: one seed and its own one-value grid; each arm: the budget's grid, both seeds
    assert [(r.variant, r.seed) for r in out[:2]] == [(pre_vq, 0), (pre_novq, 0)]
    assert all(len(r.tuning) == 1 and r.lr == 2e-3 for r in out[:2])
    arms = out[2:]
    assert [(r.variant, r.seed) for r in arms] == [(f"a | {v}", s) for v in metarec.SPECS for s in (0, 1)]
    assert all(list(r.tuning["lr"]) == [1e-3, 3e-3] for r in arms)
    by = {(r.variant.split(" | ")[1], r.seed): r for r in arms}
    for (name, _), r in by.items():
        assert np.isfinite(r.ndcg10()) and set(r.metrics["split"]) == {"valid", "test"}
        assert ("weights" in r.diagnostics) == name.startswith("MetaRec")
        assert r.diagnostics["codes"].empty == ("no VQ" in name or name == "target only")
    w = by["MetaRec", 0].diagnostics["weights"]
    assert w.groupby("step")["weight"].sum().tolist() == pytest.approx([1.0] * w["step"].nunique())
    assert (w.groupby("step").size() == 2).all()              # n_sampled sources per iteration
    uni = by["MetaRec, uniform weights", 0].diagnostics["weights"]["weight"]
    assert uni.tolist() == pytest.approx([0.5] * len(uni))
    assert set(by["target only", 0].model.tables) == {metarec.TARGET}
    assert set(by["MetaRec", 1].model.tables) == {"s1", "s2", "s3", metarec.TARGET}
    codes = by["MetaRec", 0].diagnostics["codes"]
    assert codes["step"].iloc[-1] == -1 and {0, 1, 2, 3} <= set(codes["step"])   # snapshots every step
    times = metarec.stage_times(out, {"a": prep})
    assert (times["stage"] == "pre-train").sum() == 2 and {"data", "meta", "joint", "fine-tune"} <= set(times["stage"])
    # a second target with the same sources finds both pre-trainings cached (and no arm)
    other = toy_prep(toy_csv, tmp_path, head_frac=0.5)
    again = other.target.run(metarec.runs(other, cfg, label="b", specs={"MetaRec": metarec.SPECS["MetaRec"]}))
    assert again[0].train.seconds == out[0].train.seconds


def test_the_pretraining_sees_only_the_sources_and_stops_on_their_validation(toy_csv):
    """Wiring: the pre-training trains and validates on the source tensors it is given, never
    on the target's (a changed target leaves it bit-identical, a changed source does not); it
    early-stops on the sources' pooled validation NDCG@10, and a cap that ends it is reported."""
    prep = toy_prep(toy_csv)
    cfg = toy_cfg(prep.target)
    pre = metarec.pretrain_name(prep.sources, True)
    first = prep.target.run({pre: metarec.runs(prep, cfg)[pre]}, seeds=[0])[0]
    assert metarec.TARGET not in first.model.tables
    m = first.metrics.query("split == 'valid' and metric == 'ndcg' and k == 10").set_index("group")
    assert set(m.index) == {"all", "domain:s1", "domain:s2", "domain:s3"}
    assert m.loc["all", "n_users"] == sum(s.n_users for s in prep.sources.values())
    # the pooled NDCG@10 is the users' mean: the domains' means weighted by their users
    parts = m.drop("all")
    assert m.loc["all", "value"] == pytest.approx((parts["value"] * parts["n_users"]).sum() / parts["n_users"].sum())
    # the kept weights are the best pooled validation the loop saw
    assert first.history["valid_ndcg10"].max() == pytest.approx(m.loc["all", "value"]) == pytest.approx(
        metarec.source_metrics(first.model, prep.sources)[0].query("group == 'all' and metric == 'ndcg'")["value"].iloc[0])
    other = replace(prep.target, data=replace(prep.target.data, train_inputs=prep.target.data.train_inputs.flip(1)))
    same = other.run({pre: metarec.runs(prep, cfg)[pre]}, seeds=[0])[0]
    for a, b in zip(first.model.state_dict().values(), same.model.state_dict().values()):
        assert torch.equal(a, b)
    changed = toy_prep(toy_csv, flip="s2")
    moved = changed.target.run({pre: metarec.runs(changed, cfg)[pre]}, seeds=[0])[0]
    assert any(not torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                     moved.model.state_dict().values()))
    # lr 0: validation never improves, so patience 1 stops it at its second validation
    flat = replace(cfg, pretrain=replace(cfg.pretrain, lr=0.0, warmup_steps=0, patience=1, epochs=50))
    stopped = metarec.pretrain(prep.sources["s1"], None, flat, 0, sources=prep.sources)
    assert stopped.train.stopped.startswith("early stop") and len(stopped.history) == 2 and not stopped_by_cap(stopped)
    per_epoch = metarec._steps_per_epoch(prep.sources, cfg.pretrain.batch_size, cfg.n_sampled)   # 2 of 3 sampled
    windows = sum(len(s.train_inputs) for s in prep.sources.values())     # about one pass over every window:
    assert stopped.train.steps == 2 * per_epoch == 2 * -(-windows // (8 * 2))   # batch 8, 2 sources a step
    capped = metarec.pretrain(prep.sources["s1"], None, replace(flat, pretrain=replace(flat.pretrain, epochs=1)), 0,
                              sources=prep.sources)
    assert stopped_by_cap(capped) == ["epochs=1"]
    with pytest.raises(ValueError, match="needs the source domains"):
        metarec.pretrain(prep.sources["s1"], None, cfg, 0)


def test_an_arm_leaves_the_pretrained_model_alone_and_starts_a_fresh_target_table(toy_csv):
    prep = toy_prep(toy_csv)
    cfg = toy_cfg(prep.target, variant="fine-tune")
    pre = metarec.pretrain(prep.sources["s1"], None, cfg, 0, sources=prep.sources)
    before = {k: v.clone() for k, v in pre.model.state_dict().items()}
    exp = prep.target
    tuned = metarec.fit(exp.data, exp.groups, cfg, 0, pretrained=pre)
    meta = metarec.fit(exp.data, exp.groups, replace(cfg, variant="meta"), 0, sources=prep.sources, pretrained=pre)
    for k, v in pre.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert metarec.TARGET not in pre.model.tables
    assert tuned.model.tables[metarec.TARGET].num_embeddings == exp.data.n_items + 1
    # meta after fine-tune equals meta alone: the first arm left nothing behind for the second
    alone = metarec.fit(exp.data, exp.groups, replace(cfg, variant="meta"), 0, sources=prep.sources, pretrained=pre)
    for a, b in zip(meta.model.state_dict().values(), alone.model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="already has a target table"):
        metarec.fit(exp.data, exp.groups, cfg, 0, pretrained=tuned)
    with pytest.raises(ValueError, match="trains from scratch"):
        metarec.fit(exp.data, exp.groups, replace(cfg, variant="joint"), 0, sources=prep.sources, pretrained=pre)
    with pytest.raises(ValueError, match="fine-tune needs a pre-trained model"):
        metarec.fit(exp.data, exp.groups, cfg, 0)
    with pytest.raises(ValueError, match="trains on the source domains"):
        metarec.fit(exp.data, exp.groups, replace(cfg, variant="meta"), 0, pretrained=pre)
    with pytest.raises(ValueError, match="without a VQ codebook"):
        no_vq = replace(cfg, model=replace(cfg.model, vq=None))
        metarec.fit(exp.data, exp.groups, cfg, 0, pretrained=metarec.pretrain(prep.sources["s1"], None, no_vq, 0,
                                                                              sources=prep.sources))
    with pytest.raises(ValueError, match="unknown MetaRec variant"):
        metarec.fit(exp.data, exp.groups, replace(cfg, variant="maml"), 0)
    with pytest.raises(ValueError, match="unknown source weighting"):
        metarec.fit(exp.data, exp.groups, replace(cfg, variant="meta", weights="abs"), 0, sources=prep.sources)


def test_a_meta_arm_killed_after_an_epoch_resumes_to_the_same_model(toy_csv, tmp_path):
    """The arm's checkpoint carries the source batches' generator and its records: two epochs,
    then a run of four from that checkpoint, equals four in one go (weights and source weights)."""
    prep = toy_prep(toy_csv)
    exp = prep.target
    cfg = replace(toy_cfg(exp, variant="meta"), snapshot_every=2)
    whole = metarec.fit(exp.data, exp.groups, replace(cfg, train=replace(cfg.train, epochs=4)), 0, sources=prep.sources)
    ckpt = str(tmp_path / "ckpt")
    metarec.fit(exp.data, exp.groups, replace(cfg, train=replace(cfg.train, epochs=2, checkpoint_dir=ckpt)), 0,
                sources=prep.sources)
    resumed = metarec.fit(exp.data, exp.groups, replace(cfg, train=replace(cfg.train, epochs=4, checkpoint_dir=ckpt)),
                          0, sources=prep.sources)
    assert resumed.train.steps == whole.train.steps
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.diagnostics["weights"].equals(whole.diagnostics["weights"])
    assert resumed.diagnostics["codes"]["step"].tolist() == whole.diagnostics["codes"]["step"].tolist()


def test_source_metrics_pool_each_domain_ranked_among_its_own_items(toy_csv):
    prep = toy_prep(toy_csv)
    model = metarec.build({d: s.n_items for d, s in prep.sources.items()}, toy_cfg(prep.target), 0, 6)
    model.set_domain("s2")
    metrics, ranks = metarec.source_metrics(model, prep.sources, "test", ks=(10,))
    from seqtransfer.evaluate import rank_targets
    expect = []
    for d, s in prep.sources.items():
        model.set_domain(d)
        expect.append(rank_targets(model, s, "test"))
    assert np.array_equal(ranks, np.concatenate(expect))
    model.set_domain("s3")
    metarec.source_metrics(model, prep.sources)
    assert model.domain == "s3"                                   # its scoring domain restored
    assert metrics.query("group == 'domain:s1' and metric == 'hr'")["n_users"].iloc[0] == prep.sources["s1"].n_users


def test_ema_codebook_moves_only_in_the_pass_at_the_real_weights(toy_csv):
    """Decay 0: after one meta iteration every code the target batch's items use sits at the mean
    of those items' vectors (taken before the step), and no source item moved a code."""
    prep = toy_prep(toy_csv)
    cfg = replace(toy_cfg(prep.target), model=MultiDomainConfig(
        dim=8, n_layers=1, max_len=6, vq=VQConfig(n_codes=8, ema=True, decay=0.0)))
    d = prep.target.data
    model = metarec.build({**{k: s.n_items for k, s in prep.sources.items()}, metarec.TARGET: d.n_items}, cfg, 0, 6)
    model.train()
    x, y = d.train_inputs[:4], d.train_targets[:4]
    ids = torch.unique(x)
    ids = ids[ids > 0]
    e = model.tables[metarec.TARGET].weight[ids].detach().clone()
    codes = model.quantizer.nearest(e)
    old = model.quantizer.codebook.clone()
    batches = metarec.DomainBatches(prep.sources, 4, 0)
    metarec.meta_iteration(model, torch.optim.SGD(model.parameters(), lr=0.0), (x, y), batches, cfg)
    cb = model.quantizer.codebook
    for k in range(8):
        if (codes == k).any():
            assert torch.allclose(cb[k], e[codes == k].mean(0), atol=1e-6)
        else:
            assert torch.equal(cb[k], old[k])


def test_recent_share_keeps_the_most_recent_part_of_every_history(toy_csv):
    ds = data.load(toy_csv, min_user=1, min_item=1)          # histories of 4, 7, 10 and 13 items
    cut = data.recent_share(ds, 0.5)
    n_before = ds.inter.groupby("user").size().to_numpy()
    n_after = cut.inter.groupby("user").size().to_numpy()
    assert n_after.tolist() == [max(int(np.ceil(n / 2)), 3) for n in n_before]   # 3, 4, 5, 7
    u = 3                                                     # 13 items -> its last 7, in order
    raw = lambda d: d.items.loc[d.inter[d.inter["user"] == u]["item"], "raw_id"].tolist()  # noqa: E731
    assert raw(cut) == raw(ds)[-7:]
    assert data.recent_share(ds, 1.0) is ds
    with pytest.raises(ValueError, match="kept share"):
        data.recent_share(ds, 0.0)


def test_pretrain_config_keeps_the_target_side_out_of_the_pretraining(toy_csv):
    """Arms with other target-side settings (their own warm-up, weights, variant) build on one
    pre-training: its config holds only what it depends on."""
    prep = toy_prep(toy_csv)
    cfg = toy_cfg(prep.target)
    a = metarec.pretrain_config(replace(cfg, variant="meta", weights="public", train=TrainConfig(lr=9.0)))
    b = metarec.pretrain_config(replace(cfg, variant="fine-tune"))
    assert a == b and a.pretrain == cfg.pretrain and a.model == cfg.model


def test_the_target_floor_holds_the_codebook_arms_or_every_arm(toy_csv):
    """``min_steps_arms="codebook"``: the arms with a quantiser keep the target's ``min_steps``,
    the others count from the warm-up's end; ``"all"`` (the library's default) keeps it
    everywhere; the pre-trainings' schedules never change; an unknown value names the choices."""
    prep = toy_prep(toy_csv)
    cfg = toy_cfg(prep.target)
    cfg = replace(cfg, train=replace(cfg.train, warmup_steps=2, min_steps=40))
    floor = {name: r.config.train.min_steps for name, r in metarec.runs(prep, cfg, min_steps_arms="codebook").items()}
    every = {name: r.config.train.min_steps for name, r in metarec.runs(prep, cfg).items()}
    codebook = {name for name, change in metarec.SPECS.items() if change.get("vq", True)}
    assert codebook == {"joint (VQ)", "pre-train + fine-tune", "MetaRec", "MetaRec, public sign",
                        "MetaRec, uniform weights"}
    for name in metarec.SPECS:
        assert floor[name] == (40 if name in codebook else 2), name
        assert every[name] == 40
    pre = [metarec.pretrain_name(prep.sources, v) for v in (True, False)]
    assert [floor[p] for p in pre] == [every[p] for p in pre]
    with pytest.raises(ValueError, match="min_steps_arms.*codebook"):
        metarec.runs(prep, cfg, min_steps_arms="vq")


def test_quick_switches_each_part_on_once_and_full_compares_both_orders():
    """quick's arms are one order of the ladder (pre-training, the codebook, meta transfer), each
    step's two arms trained and compared; full adds MetaRec without VQ and so the other order."""
    quick = metarec.comparison_pairs(metarec.QUICK_SPECS)
    steps = [part for arm, base, part in metarec.LADDER if arm in metarec.QUICK_SPECS and base in metarec.QUICK_SPECS]
    assert steps == ["pre-training", "the VQ codebook without meta transfer", "meta transfer with the VQ codebook"]
    assert set(metarec.QUICK_SPECS) <= set(metarec.SPECS)
    for arm, base, part in metarec.LADDER:
        if part in steps:
            assert (arm, base) in quick
    # each arm against target only, no pair twice
    assert {(a, "target only") for a in metarec.QUICK_SPECS if a != "target only"} <= set(quick)
    assert len(quick) == len(set(quick))
    full = metarec.comparison_pairs(metarec.SPECS)
    assert {("MetaRec", "MetaRec, no VQ"), ("MetaRec, no VQ", "pre-train + fine-tune, no VQ"),
            ("MetaRec", "pre-train + fine-tune")} <= set(full)
