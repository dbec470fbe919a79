"""MetaRec end to end on a toy setting through the shared loop: every variant, shared
pre-training, the pre-trained model left untouched, and the EMA codebook moving only in the pass
at the real weights (never inside a source's fast-weight copy)."""
from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from seqtransfer import data
from seqtransfer.budget import get_budget
from seqtransfer.experiment import prepare
from seqtransfer.methods import metarec
from seqtransfer.models import MultiDomainConfig, VQConfig

pytestmark = pytest.mark.unit


@pytest.fixture
def toy_prep(toy_csv):
    ds = data.load(toy_csv, min_user=1, min_item=1)
    exp = prepare(ds, get_budget("smoke", max_len=6, dim=8), seed=0, device="cpu", progress=False)
    src = data.build_sequences(data.leave_one_out(ds), max_len=6)
    return metarec.Prepared(None, {"s1": src, "s2": src, "s3": src}, {d: ds.items for d in ("s1", "s2", "s3")},
                            exp, {"data": 0.0})


def toy_cfg(exp, **kw):
    return metarec.MetaRecConfig(model=MultiDomainConfig(dim=8, n_layers=1, max_len=6, vq=VQConfig(n_codes=8)),
                                 train=exp.train_config(max_steps=3, epochs=3, patience=10, batch_size=8),
                                 pretrain_steps=2, n_sampled=2, snapshot_every=1, **kw)


def test_every_spec_through_the_shared_loop_with_shared_pretraining(toy_prep):
    cfg = toy_cfg(toy_prep.target)
    shared = {}
    res = metarec.run_setting(toy_prep, cfg, seed=0, label="a", pretrained=shared)
    assert [r.variant for r in res] == [f"a | {v}" for v in metarec.SPECS]
    assert len(shared) == 2                                   # one pre-training with VQ, one without
    first = {k: id(v) for k, v in shared.items()}
    again = metarec.run_setting(toy_prep, cfg, seed=0, label="b", specs={"MetaRec": metarec.SPECS["MetaRec"]},
                                pretrained=shared)
    assert {k: id(v) for k, v in shared.items()} == first and again[0].variant == "b | MetaRec"   # reused
    by = {r.variant.split(" | ")[1]: r for r in res}
    for name, r in by.items():
        assert np.isfinite(r.ndcg10()) and set(r.metrics["split"]) == {"valid", "test"}
        assert ("weights" in r.diagnostics) == name.startswith("MetaRec")
        assert r.diagnostics["codes"].empty == ("no VQ" in name or name == "target only")
    w = by["MetaRec"].diagnostics["weights"]
    assert w.groupby("step")["weight"].sum().tolist() == pytest.approx([1.0] * w["step"].nunique())
    assert (w.groupby("step").size() == 2).all()              # n_sampled sources per iteration
    assert by["MetaRec, uniform weights"].diagnostics["weights"]["weight"].tolist() == pytest.approx(
        [0.5] * len(by["MetaRec, uniform weights"].diagnostics["weights"]))
    assert set(by["target only"].model.tables) == {metarec.TARGET}
    codes = by["MetaRec"].diagnostics["codes"]
    assert codes["step"].iloc[-1] == -1 and {0, 1, 2, 3} <= set(codes["step"])   # snapshots every step
    times = metarec.stage_times(res, {"a": toy_prep})
    assert set(times["stage"]) >= {"data", "pre-train", "meta", "joint", "target-only", "fine-tune"}


def test_fit_from_a_pretrained_model_leaves_it_untouched_and_adds_a_fresh_target_table(toy_prep):
    cfg = toy_cfg(toy_prep.target, variant="fine-tune")
    pre, hist = metarec.pretrained_model(toy_prep, cfg, seed=0)
    assert metarec.TARGET not in pre.tables and len(hist) == cfg.pretrain_steps
    before = copy.deepcopy(pre.state_dict())
    r = metarec.fit(toy_prep, cfg, seed=0, pretrained=(pre, hist))
    for k, v in pre.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert r.model.tables[metarec.TARGET].num_embeddings == toy_prep.target.data.n_items + 1
    assert (r.history["stage"] == "pre-train").sum() == cfg.pretrain_steps
    with pytest.raises(ValueError, match="already has a target table"):
        metarec.fit(toy_prep, cfg, seed=0, pretrained=(r.model, hist))
    with pytest.raises(ValueError, match="trains from scratch"):
        metarec.fit(toy_prep, replace(cfg, variant="joint"), seed=0, pretrained=(pre, hist))
    with pytest.raises(ValueError, match="fine-tune needs pre-training"):
        metarec.fit(toy_prep, replace(cfg, pretrain_steps=0), seed=0)
    with pytest.raises(ValueError, match="unknown MetaRec variant"):
        metarec.fit(toy_prep, replace(cfg, variant="maml"), seed=0)
    with pytest.raises(ValueError, match="unknown source weighting"):
        metarec.fit(toy_prep, replace(cfg, variant="meta", weights="abs"), seed=0)


def test_ema_codebook_moves_only_in_the_pass_at_the_real_weights(toy_prep):
    """Decay 0: after one meta iteration every code the target batch's items use sits at the mean
    of those items' vectors (taken before the step), and no source item moved a code."""
    cfg = replace(toy_cfg(toy_prep.target), model=MultiDomainConfig(
        dim=8, n_layers=1, max_len=6, vq=VQConfig(n_codes=8, ema=True, decay=0.0)))
    model = metarec.build(toy_prep, cfg, seed=0)
    model.train()
    d = toy_prep.target.data
    x, y = d.train_inputs[:4], d.train_targets[:4]
    ids = torch.unique(x)
    ids = ids[ids > 0]
    e = model.tables[metarec.TARGET].weight[ids].detach().clone()
    codes = model.quantizer.nearest(e)
    old = model.quantizer.codebook.clone()
    batches = metarec.DomainBatches(toy_prep.sources, 4, 0)
    metarec.meta_iteration(model, torch.optim.SGD(model.parameters(), lr=0.0), (x, y), batches, cfg)
    cb = model.quantizer.codebook
    for k in range(8):
        if (codes == k).any():
            assert torch.allclose(cb[k], e[codes == k].mean(0), atol=1e-6)
        else:
            assert torch.equal(cb[k], old[k])


def test_recent_share_keeps_the_most_recent_part_of_every_history(toy_csv):
    ds = data.load(toy_csv, min_user=1, min_item=1)          # histories of 4, 7, 10 and 13 items
    cut = metarec.recent_share(ds, 0.5)
    n_before = ds.inter.groupby("user").size().to_numpy()
    n_after = cut.inter.groupby("user").size().to_numpy()
    assert n_after.tolist() == [max(int(np.ceil(n / 2)), 3) for n in n_before]   # 3, 4, 5, 7
    u = 3                                                     # 13 items -> its last 7, in order
    raw = lambda d: d.items.loc[d.inter[d.inter["user"] == u]["item"], "raw_id"].tolist()  # noqa: E731
    assert raw(cut) == raw(ds)[-7:]
    assert metarec.recent_share(ds, 1.0) is ds
    with pytest.raises(ValueError, match="kept share"):
        metarec.recent_share(ds, 0.0)


def test_plateau_step_on_hand_computed_block_means():
    """Blocks of 2 steps, tol 1%: means 4, 3, 2.99 (not 1% below 3: bad), 3 (bad) -> the second
    bad block in a row ends at step 8; a better block resets the count."""
    flat = [4, 4, 3, 3, 2.99, 2.99, 3, 3]
    assert metarec.plateau_step(flat, 2, 0.01, 2) == 8
    assert metarec.plateau_step(flat, 2, 0.01, 3) is None           # only two bad blocks
    assert metarec.plateau_step(flat, 2, 0.001, 2) is None          # 2.99 is 0.33% below 3: better
    assert metarec.plateau_step(flat[:7], 2, 0.01, 2) is None       # the last block is incomplete
    assert metarec.plateau_step([4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2], 2, 0.01, 2) == 12
    assert metarec.plateau_step(flat, 0, 0.01, 2) is None           # block 0: never stops
    with pytest.raises(ValueError, match="patience"):
        metarec.plateau_step(flat, 2, 0.01, 0)


def test_pretraining_stops_when_its_loss_levels_off_and_says_so(toy_prep):
    """lr 0 keeps the loss flat (batches vary, the weights do not): with tol 50% every block after
    the first is bad, so patience 2 stops it after three blocks; block 0 runs the whole cap."""
    cfg = replace(toy_cfg(toy_prep.target), pretrain_steps=40, pretrain_lr=0.0, pretrain_block=4, pretrain_tol=0.5)
    _, hist = metarec.pretrained_model(toy_prep, cfg, seed=0)
    assert len(hist) == 12 and hist.attrs["stopped"] == "plateau"
    _, fixed = metarec.pretrained_model(toy_prep, replace(cfg, pretrain_block=0), seed=0)
    assert len(fixed) == 40 and fixed.attrs["stopped"] == "schedule"   # nothing checked
    _, short = metarec.pretrained_model(toy_prep, replace(cfg, pretrain_steps=8), seed=0)
    assert len(short) == 8 and short.attrs["stopped"] == "cap"         # two blocks: too few to tell
    text = metarec.pretrain_sentence({"a": (None, hist), "b": (None, short), "c": (None, fixed)})
    assert "ran 12 steps of at most 40; its training loss had levelled off" in text
    assert "ran all 8 steps of its cap without its training loss levelling off" in text
    assert "ran a fixed schedule of 40 steps" in text
    # the closing loss averages the run's own block (4 steps here), not a fixed 50
    assert f"mean loss of its last 4 steps {hist['loss'].to_numpy()[-4:].mean():.3f}" in text
