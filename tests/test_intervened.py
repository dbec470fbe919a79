"""Personalizing Intervened Network (methods.intervened, models.plugins): the backdoor-adjusted
gradient against hand-computed per-stratum gradients, plugin routing, and the two stages."""
import numpy as np
import pytest
import torch

from seqtransfer import data
from seqtransfer.diagnostics import stratum_gradients
from seqtransfer.evaluate import rank_targets
from seqtransfer.methods import baseline, intervened
from seqtransfer.methods.intervened import IntervenedConfig, adjusted_loss, stratum_prior
from seqtransfer.models import make_backbone
from seqtransfer.models.plugins import PluginHead, RoutedRecommender
from seqtransfer.train import TrainConfig

pytestmark = pytest.mark.unit

SMALL = dict(dim=8, n_heads=1, n_layers=1)
FAST = dict(epochs=2, batch_size=4, progress=False, patience=100, device="cpu", lr=1e-2)


@pytest.fixture(scope="module")
def toy(toy_csv):
    """``toy_csv`` (16 users with 4, 7, 10 or 13 interactions), windows of at most 6."""
    sp = data.leave_one_out(data.load(toy_csv, min_user=1, min_item=1))
    sd = data.build_sequences(sp, max_len=6)
    return sd, data.activeness_groups(sp.activeness, head_frac=0.25)


def _model(sd, seed=0, backbone="sasrec"):
    torch.manual_seed(seed)
    return make_backbone(backbone, sd.n_items, max_len=sd.max_len, **SMALL).eval()


def _grad(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def test_adjusted_gradient_is_prior_weighted_sum_of_stratum_mean_gradients(toy):
    sd, _ = toy
    m = _model(sd)
    x, y = sd.train_inputs, sd.train_targets                        # (N, T)
    ws = torch.arange(len(x)) % 3                                   # strata 0..2 present, 3 absent
    prior = torch.tensor([0.4, 0.3, 0.2, 0.1])
    got = _grad(m, adjusted_loss(m.position_losses(x, y), y, ws, prior))
    weights = prior[:3] / prior[:3].sum()                           # renormalised over present strata
    want = sum(w * _grad(m, m.loss(x[ws == z], y[ws == z])) for z, w in enumerate(weights))
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, _grad(m, m.loss(x, y)), atol=1e-4)   # not the plain mean


def test_one_stratum_gives_the_plain_mean(toy):
    sd, _ = toy
    m = _model(sd)
    x, y = sd.train_inputs, sd.train_targets
    adj = adjusted_loss(m.position_losses(x, y), y, torch.zeros(len(x), dtype=torch.long), torch.ones(1))
    assert torch.allclose(adj, m.loss(x, y), atol=1e-6)
    assert torch.allclose(_grad(m, adj), _grad(m, m.loss(x, y)), atol=1e-6)


def test_priors_compute_as_documented(toy):
    stratum = np.array([0, 0, 0, 2])                                # stratum 1 is empty
    positions = np.array([1.0, 1.0, 1.0, 9.0])
    assert stratum_prior("users", stratum, 3).tolist() == [0.75, 0.0, 0.25]
    assert stratum_prior("uniform", stratum, 3).tolist() == [0.5, 0.0, 0.5]
    assert stratum_prior("interactions", stratum, 3, positions).tolist() == [0.25, 0.0, 0.75]
    # the "interactions" prior of a batch gives back the plain mean over its positions
    sd, _ = toy
    m = _model(sd)
    x, y = sd.train_inputs, sd.train_targets
    ws = (sd.train_users % 2)
    share = torch.stack([(y[ws == z] > 0).sum() for z in (0, 1)]).float()
    pl = m.position_losses(x, y)
    assert torch.allclose(adjusted_loss(pl, y, ws, share / share.sum()), m.loss(x, y), atol=1e-6)


def test_plugin_head_is_identity_at_init():
    h = torch.randn(3, 5, 8)
    for kind in ("mlp", "linear"):
        assert torch.equal(PluginHead(8, 16, kind, dropout=0.5).train()(h), h)


def test_routed_model_at_init_scores_exactly_like_its_backbone(toy):
    sd, _ = toy
    m = _model(sd)
    routed = RoutedRecommender(m, 2, torch.arange(sd.n_users) % 2).eval()
    x, y, users = sd.train_inputs, sd.train_targets, sd.train_users
    assert torch.equal(routed.position_losses(x, y, users), m.position_losses(x, y))
    assert np.array_equal(rank_targets(routed, sd, "test"), rank_targets(m, sd, "test"))


def test_each_user_goes_through_its_plugin(toy):
    sd, _ = toy
    m = _model(sd)
    route = torch.arange(sd.n_users) % 3
    routed = RoutedRecommender(m, 3, route, kind="linear").eval()
    with torch.no_grad():
        for k, plugin in enumerate(routed.plugins):
            plugin.f[-1].bias.fill_(k + 1.0)                        # plugin k adds k+1 everywhere
    seqs, lengths = sd.eval_inputs["valid"], sd.eval_lengths["valid"]
    users = torch.arange(sd.n_users).flip(0)                        # rows in any order
    shift = routed.represent(seqs[users], lengths[users], users) - m.represent(seqs[users], lengths[users])
    assert torch.allclose(shift, (route[users] + 1.0)[:, None].expand_as(shift), atol=1e-6)
    enc = routed.encode(seqs[users], users) - m.encode(seqs[users])  # every position, not only the last
    assert torch.allclose(enc, (route[users] + 1.0)[:, None, None].expand_as(enc), atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        RoutedRecommender(m, 2, route)


def test_both_switches_off_is_the_baseline_bit_for_bit(toy):
    sd, groups = toy
    kw = dict(backbone="sasrec", backbone_kwargs=SMALL, train=TrainConfig(**FAST))
    base = baseline.fit(sd, groups, baseline.BaselineConfig(**kw), seed=3)
    off = IntervenedConfig(use_aggregation=False, use_plugins=False, **kw)
    ours = intervened.fit(sd, groups, off, seed=3)
    for k, v in base.model.state_dict().items():
        assert torch.equal(v, ours.model.state_dict()[k]), k
    assert base.history["loss"].tolist() == ours.history["loss"].tolist()
    assert base.metrics["value"].tolist() == ours.metrics["value"].tolist()
    assert ours.variant == "sasrec intervened (plain)"


def test_aggregation_changes_training_and_frozen_backbone_stays_put(toy):
    sd, groups = toy
    kw = dict(backbone="gru4rec", backbone_kwargs=SMALL, n_strata=2,
              train=TrainConfig(**{**FAST, "epochs": 1}))
    plain = intervened.fit(sd, groups, IntervenedConfig(use_aggregation=False, use_plugins=False, **kw))
    ga = intervened.fit(sd, groups, IntervenedConfig(use_plugins=False, **kw))
    both = intervened.fit(sd, groups, IntervenedConfig(plugin_kind="linear", **kw))
    assert ga.history["loss"].tolist() != plain.history["loss"].tolist()
    kept = intervened.plugins_kept(both)
    backbone = both.model.backbone if kept else both.model
    for k, v in ga.model.state_dict().items():                      # stage 2 left the backbone alone
        assert torch.equal(v, backbone.state_dict()[k]), k
    stages = both.diagnostics["stages"].set_index("stage")
    assert stages.loc["plugins", "backbone_valid_ndcg10"] == pytest.approx(ga.ndcg10("all", "valid"))
    assert stages.loc["plugins", "best_valid_ndcg10"] != stages.loc["plugins", "backbone_valid_ndcg10"]  # they trained


def test_plugins_on_a_finished_stage1_equal_training_it_again(toy):
    sd, groups = toy
    kw = dict(backbone="gru4rec", backbone_kwargs=SMALL, n_strata=2, train=TrainConfig(**FAST))
    agg = intervened.fit(sd, groups, IntervenedConfig(use_plugins=False, **kw), seed=2)
    before = {k: v.clone() for k, v in agg.model.state_dict().items()}
    both = IntervenedConfig(**kw)
    reused = intervened.fit(sd, groups, both, seed=2, stage1=agg)
    scratch = intervened.fit(sd, groups, both, seed=2)
    assert reused.metrics["value"].tolist() == scratch.metrics["value"].tolist()
    assert reused.history.drop(columns=["seconds", "eval_seconds", "cpu_seconds"], errors="ignore").equals(scratch.history.drop(columns=["seconds", "eval_seconds", "cpu_seconds"], errors="ignore"))
    for k, v in agg.model.state_dict().items():                     # the finished run is not changed
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in agg.model.parameters())
    # the reused backbone is stage1's training, not this run's: its seconds are not counted twice
    assert reused.diagnostics["stages"]["trained"].tolist() == [False, True]
    assert scratch.diagnostics["stages"]["trained"].tolist() == [True, True]
    from seqtransfer.timing import run_seconds
    assert run_seconds(reused) == pytest.approx(reused.diagnostics["stages"]["seconds"].iloc[1])


@pytest.mark.parametrize("change, words", [
    (dict(seed=5), ["seed 2", "seed 5"]),
    (dict(use_plugins=False), ["use_plugins=False"]),
    (dict(use_aggregation=False), ["'baseline'", "use_aggregation=False"]),
    (dict(backbone="sasrec"), ["gru4rec", "'sasrec'"]),
    (dict(n_strata=3), ["prior", "same strata"]),
])
def test_a_stage1_that_does_not_fit_the_config_is_refused(toy, change, words):
    sd, groups = toy
    kw = dict(backbone="gru4rec", backbone_kwargs=SMALL, n_strata=2, train=TrainConfig(**{**FAST, "epochs": 1}))
    agg = intervened.fit(sd, groups, IntervenedConfig(use_plugins=False, **kw), seed=2)
    seed = change.pop("seed", 2)
    with pytest.raises(ValueError) as err:
        intervened.fit(sd, groups, IntervenedConfig(**{**kw, **change}), seed=seed, stage1=agg)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_fit_end_to_end_with_everything_on(toy):
    sd, groups = toy
    cfg = IntervenedConfig(backbone="sasrec", backbone_kwargs=SMALL, train=TrainConfig(**FAST),
                           n_strata=3, routes="strata", conflict_every=2, conflict_batch=4)
    res = intervened.fit(sd, groups, cfg, seed=1)
    assert res.method == "intervened" and res.variant == "sasrec intervened (aggregation+plugins)"
    test = res.metrics.query("split == 'test'")
    assert {"all", "head", "tail"} <= set(test["group"])
    assert np.isfinite(test["value"]).all()
    assert set(res.history["stage"]) == {"backbone", "plugins"}
    assert {"strata", "conflict", "stages", "routes", "backbone_metrics"} <= set(res.diagnostics)
    st = res.diagnostics["strata"]
    assert st["users"].sum() == sd.n_users and st["prior"].sum() == pytest.approx(1.0)
    assert st["prior"].tolist() == pytest.approx((st["users"] / sd.n_users).tolist())
    assert res.diagnostics["routes"]["users"].tolist() == st["users"].tolist()
    assert len(res.diagnostics["conflict"]) > 0


def test_stratum_gradients_frame(toy):
    sd, _ = toy
    m = _model(sd)
    ws = sd.train_users % 2
    share = np.array([float((sd.train_targets[ws == z] > 0).sum()) for z in (0, 1)])
    df = stratum_gradients(m, sd, ws, share / share.sum(), batch=1000)
    assert df["gradient"].tolist() == ["stratum 0", "stratum 1", "plain", "adjusted"]
    # with every window sampled and the position-share prior, plain and adjusted coincide
    assert df.set_index("gradient").loc["plain", "cos_adjusted"] == pytest.approx(1.0, abs=1e-5)
    df = stratum_gradients(m, sd, ws, [0.9, 0.1], batch=2)
    assert (df["norm"] > 0).all() and df["windows"].iloc[:2].tolist() == [2, 2]


@pytest.mark.parametrize("kw, field, choice", [
    (dict(n_strata=0), "n_strata", ">= 1"),
    (dict(prior="heads"), "prior", "uniform"),
    (dict(routes="users"), "routes", "head_tail"),
    (dict(boundaries=[5, 3]), "boundaries", "increasing"),
    (dict(plugin_kind="deep"), "plugin_kind", "mlp"),
])
def test_invalid_config_is_a_clear_error(kw, field, choice):
    with pytest.raises(ValueError, match=field) as err:
        IntervenedConfig(**kw)
    assert choice in str(err.value)


def test_describe_strata_is_the_table_fit_records(toy):
    sd, groups = toy
    cfg = IntervenedConfig(backbone="gru4rec", backbone_kwargs=SMALL, n_strata=3, use_plugins=False,
                           train=TrainConfig(**{**FAST, "epochs": 1}))
    table = intervened.describe_strata(sd, groups, cfg)
    recorded = intervened.fit(sd, groups, cfg).diagnostics["strata"].drop(columns="variant")
    assert table.equals(recorded)


def test_gradient_view_stacks_one_frame_per_model(toy):
    sd, _ = toy
    cfg = IntervenedConfig(n_strata=2)
    view = intervened.gradient_view({"a": _model(sd, 0), "b": _model(sd, 1)}, sd, cfg, batch=4)
    assert view["variant"].tolist() == ["a"] * 4 + ["b"] * 4
    assert view["gradient"].tolist()[:4] == ["stratum 0", "stratum 1", "plain", "adjusted"]
    assert view.loc[view["gradient"] == "adjusted", "weight_adjusted"].tolist() == [1.0, 1.0]


def test_sensitivity_reuses_retrains_plugins_only_and_matches_full_fits(toy):
    sd, groups = toy
    kw = dict(backbone="gru4rec", backbone_kwargs=SMALL, n_strata=2, plugin_kind="linear",
              train=TrainConfig(**{**FAST, "epochs": 1}))
    cfg = IntervenedConfig(**kw)
    base = intervened.fit(sd, groups, IntervenedConfig(use_aggregation=False, use_plugins=False, **kw), seed=2)
    ref = intervened.fit(sd, groups, cfg, seed=2)
    sens = intervened.sensitivity(sd, groups, cfg, base, n_strata_grid=[2, 3], head_frac_grid=[0.25, 0.5],
                                  seed=2, reference=ref)
    trained = sens.drop_duplicates(["sweep", "setting"]).set_index(["sweep", "setting"])["trained"]
    assert trained.to_dict() == {("n_strata", 2): "reused", ("n_strata", 3): "both stages",
                                 ("head_frac", 0.25): "reused", ("head_frac", 0.5): "plugins"}
    # stage 2 alone on the reference's backbone gives exactly what a full fit with those groups gives
    wide = data.activeness_groups(sd.activeness, head_frac=0.5, cold_max=groups.cold_max)
    full = intervened.fit(sd, wide, cfg, seed=2)
    got = sens.query("sweep == 'head_frac' and setting == 0.5").set_index("group")
    for group in ("all", "head", "tail"):
        assert got.loc[group, "method"] == full.ndcg10(group)
        assert got.loc[group, "n_users"] == int(wide[group].sum())
    # the base model is re-scored under each point's groups; the reused point is the reference
    same = sens.query("sweep == 'n_strata' and setting == 2").set_index("group")
    for group in ("all", "head", "tail"):
        assert same.loc[group, "base"] == base.ndcg10(group)
        assert same.loc[group, "method"] == ref.ndcg10(group)
    assert np.allclose(sens["change"].dropna(), (sens["method"] / sens["base"] - 1)[sens["base"] > 0])
    with pytest.raises(ValueError, match="seed"):
        intervened.sensitivity(sd, groups, cfg, base, [2], seed=0, reference=ref)


def test_claim_verdict_says_when_the_claim_holds_and_when_not():
    import pandas as pd
    def table(tail, head):
        """compare-style rows: (diff, lo, hi) per group, the base at tail 0.10, head 0.20."""
        rows = [{"variant": "m", "baseline": "b", "group": g, "metric": "ndcg", "k": 10, "a": b + d,
                 "b": b, "diff": d, "lo": lo, "hi": hi} for g, b, (d, lo, hi) in (("tail", 0.10, tail),
                                                                               ("head", 0.20, head))]
        return pd.DataFrame(rows)
    holds = intervened.claim_verdict(table((0.02, 0.01, 0.03), (0.0, -0.01, 0.01)), "m", "b")
    assert "claim holds" in holds and "+20.0%" in holds and "[+0.0100, +0.0300]" in holds
    assert "head users fall below" in intervened.claim_verdict(table((0.02, 0.01, 0.03), (-0.01, -0.02, -0.005)), "m", "b")
    assert "tail users get worse" in intervened.claim_verdict(table((-0.01, -0.02, -0.005), (0.0, -0.01, 0.01)), "m", "b")
    noisy = intervened.claim_verdict(table((0.02, -0.01, 0.05), (-0.01, -0.04, 0.02)), "m", "b")
    assert "within the noise" in noisy and "head users" not in noisy
    one_seed = pd.DataFrame([{"variant": v, "group": g, "metric": "ndcg", "k": 10, "mean": x, "std": 0.0,
                              "n_seeds": 1, "ci95": np.nan}
                             for v, g, x in (("m", "tail", 0.12), ("m", "head", 0.2), ("b", "tail", 0.1),
                                             ("b", "head", 0.2))])
    assert "cannot be told from noise" in intervened.claim_verdict(one_seed, "m", "b")
    assert "cannot check" in intervened.claim_verdict(one_seed, "m", "missing")


def test_stage2_returns_the_backbone_bit_for_bit_when_plugins_cannot_help(toy):
    sd, groups = toy
    kw = dict(backbone="gru4rec", backbone_kwargs=SMALL, train=TrainConfig(**FAST))
    base = baseline.fit(sd, groups, baseline.BaselineConfig(**kw), seed=4)
    frozen_plugins = TrainConfig(**{**FAST, "lr": 0.0})            # plugins stay zero: routed == backbone
    for freeze in (True, False):
        cfg = IntervenedConfig(use_aggregation=False, plugin_train=frozen_plugins, freeze_backbone=freeze, **kw)
        run = intervened.fit(sd, groups, cfg, seed=4, stage1=base)
        assert not isinstance(run.model, RoutedRecommender)
        for k, v in base.model.state_dict().items():
            assert torch.equal(v, run.model.state_dict()[k]), k
        assert run.metrics["value"].tolist() == base.metrics["value"].tolist()
        assert intervened.plugins_kept(run) is False
        assert "plugins NOT kept" in intervened.stage2_sentence(run)
    assert intervened.plugins_kept(base) is None
    # on an untrained backbone (lr 0) linear plugins do help on validation, and are kept
    untrained = baseline.fit(sd, groups, baseline.BaselineConfig(**{**kw, "train": TrainConfig(**{**FAST, "lr": 0.0})}), seed=4)
    cfg = IntervenedConfig(use_aggregation=False, plugin_kind="linear",
                           plugin_train=TrainConfig(**{**FAST, "epochs": 5}), **kw)
    run = intervened.fit(sd, groups, cfg, seed=4, stage1=untrained)
    assert isinstance(run.model, RoutedRecommender) and intervened.plugins_kept(run) is True
    stages = run.diagnostics["stages"].set_index("stage")
    assert stages.loc["plugins", "best_valid_ndcg10"] > stages.loc["plugins", "backbone_valid_ndcg10"]
    assert stages.loc["plugins", "backbone_valid_ndcg10"] == pytest.approx(untrained.ndcg10("all", "valid"))
    assert "plugins kept" in intervened.stage2_sentence(run)
