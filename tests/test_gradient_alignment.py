"""Gradient alignment + adversarial discriminator (Yin et al., KDD 2020): the meta update, the
gradient reversal, the discriminator, and equivalence with the baseline when switched off."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from seqtransfer import data
from seqtransfer.diagnostics import pca_2d, representations
from seqtransfer.methods import baseline
from seqtransfer.methods import gradient_alignment as ga
from seqtransfer.models.adversarial import ActivenessDiscriminator, grad_reverse
from seqtransfer.train import TrainConfig

pytestmark = pytest.mark.unit

SMALL = dict(dim=8, n_heads=1, n_layers=1)


def _split() -> data.Split:
    """12 users over 15 items: users 0-2 have 14 training items (head), the rest 4 (tail)."""
    rng = np.random.default_rng(0)
    lengths = np.array([14] * 3 + [4] * 9)
    seqs = [rng.integers(1, 16, size=n) for n in lengths]
    ptr = np.concatenate([[0], np.cumsum(lengths)])
    return data.Split("toy", 12, 15, ptr, np.concatenate(seqs), rng.integers(1, 16, 12),
                      rng.integers(1, 16, 12))


@pytest.fixture(scope="module")
def toy():
    sp = _split()
    sd = data.build_sequences(sp, max_len=5)
    groups = data.activeness_groups(sp.activeness, head_frac=0.25)
    assert groups["head"].sum() == 3
    return sd, groups


def _train(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 4, "lr": 1e-2, "progress": False,
                          "patience": 100, "device": "cpu", **kw})


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _quadratic_steps(w: torch.nn.Parameter, centres, lr):
    """Inner steps on L_i(w) = 0.5 * ||w - c_i||^2, whose gradient is w - c_i."""
    opt = torch.optim.SGD([w], lr=lr)

    def step(c):
        opt.zero_grad()
        (0.5 * ((w - c) ** 2).sum()).backward()
        opt.step()
        return None
    return [lambda c=c: step(c) for c in centres]


def test_outer_step_matches_hand_computed_reptile_update():
    theta0 = np.array([1.0, -2.0, 0.5])
    centres = [np.array([0.0, 1.0, 2.0]), np.array([3.0, 0.0, -1.0]), np.array([-1.0, 2.0, 0.0])]
    lr, outer = 0.3, 0.4
    theta = theta0.copy()
    for c in centres:                       # theta_{j+1} = theta_j - lr * (theta_j - c_j)
        theta = theta - lr * (theta - c)
    expected = theta0 + outer * (theta - theta0)

    w = torch.nn.Parameter(torch.tensor(theta0))
    ga.reptile_step([w], _quadratic_steps(w, [torch.tensor(c) for c in centres], lr), outer)
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=0, atol=1e-12)


def test_outer_lr_one_is_k_plain_sgd_steps():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    plain = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    plain.load_state_dict(net.state_dict())
    xs = [torch.randn(5, 4) for _ in range(3)]

    def steps(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        def one(x):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return [lambda x=x: one(x) for x in xs]

    ga.reptile_step(list(net.parameters()), steps(net), outer_lr=1.0)
    for s in steps(plain):
        s()
    assert _weights_equal(net, plain)


def test_gradient_reversal_flips_and_scales_the_encoder_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    y = grad_reverse(x, 0.5)
    assert torch.equal(y, x)
    (y * torch.arange(3.0)).sum().backward()
    assert torch.equal(x.grad, -0.5 * torch.arange(3.0).expand(4, 3))

    torch.manual_seed(0)
    enc = torch.nn.Linear(6, 5)
    disc = ActivenessDiscriminator(5, hidden=7, dropout=0.0, scale=2.0)
    inputs, labels = torch.randn(8, 6), torch.randint(0, 2, (8,))

    def grads(through_reversal: bool):
        enc.zero_grad()
        disc.zero_grad()
        h = enc(inputs)
        logits = disc(h) if through_reversal else disc.net(h)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return [p.grad.clone() for p in enc.parameters()], [p.grad.clone() for p in disc.parameters()]

    enc_rev, disc_rev = grads(True)
    enc_plain, disc_plain = grads(False)
    for a, b in zip(enc_rev, enc_plain):
        torch.testing.assert_close(a, -2.0 * b)
    for a, b in zip(disc_rev, disc_plain):            # the discriminator's own gradient is untouched
        torch.testing.assert_close(a, b)


def test_discriminator_learns_a_linearly_encoded_label():
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (256,))
    h = torch.randn(256, 8)
    h[:, 0] += 3.0 * (2 * labels - 1)                 # the label lives in one direction
    disc = ActivenessDiscriminator(8, hidden=16, scale=1.0)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(disc(h), labels).backward()
        opt.step()
    disc.eval()
    assert ga.balanced_accuracy(disc(h), labels) > 0.97
    assert ga.balanced_accuracy(torch.zeros(256, 2), labels) == pytest.approx(0.5)


def test_alternating_batches_alternate_groups_and_match_baseline_length(toy):
    sd, groups = toy
    head, tail = sd.windows_of(groups["head"]), sd.windows_of(groups["tail"])
    gen = torch.Generator().manual_seed(0)
    metas = list(ga.alternating_batches(head, tail, len(sd.train_inputs), 4, 3, gen))
    inner = [b for m in metas for b in m.split(4)]
    assert len(inner) == -(-len(sd.train_inputs) // 4)           # as many as baseline steps
    is_head = torch.as_tensor(groups["head"])[sd.train_users]
    for j, b in enumerate(inner):
        assert len(b) == 4 and bool(is_head[b].all() if j % 2 == 0 else (~is_head[b]).all())


def test_both_switches_off_equals_baseline_bit_for_bit(toy):
    sd, groups = toy
    base = baseline.fit(sd, groups, baseline.BaselineConfig(backbone_kwargs=SMALL, train=_train()), seed=3)
    cfg = ga.GradientAlignmentConfig(backbone_kwargs=SMALL, train=_train(), use_alignment=False,
                                     use_adversarial=False)
    res = ga.fit(sd, groups, cfg, seed=3)
    assert res.method == "gradient_alignment" and res.variant == "sasrec GA off"
    assert _weights_equal(res.model, base.model)
    assert res.history["loss"].tolist() == base.history["loss"].tolist()


def test_a_rerun_with_the_same_seed_is_the_same_model_bit_for_bit(toy):
    """GA (alignment, adversary, probe) retrained with the same seed gives the same weights and
    ranks, also after another run in between (as the lr grid trains them in one process), so a
    verdict can be re-checked; another seed gives another model."""
    sd, groups = toy
    cfg = ga.GradientAlignmentConfig(backbone_kwargs=SMALL, train=_train(), inner_steps=2, conflict_every=2,
                                     conflict_batch=4)
    first = ga.fit(sd, groups, cfg, seed=3)
    ga.fit(sd, groups, replace(cfg, train=_train(lr=3e-2)), seed=5)          # another run in between
    again = ga.fit(sd, groups, cfg, seed=3)
    assert _weights_equal(first.model, again.model)
    assert all(np.array_equal(first.ranks[s], again.ranks[s]) for s in ("valid", "test"))
    assert first.diagnostics["discriminator"].equals(again.diagnostics["discriminator"])
    assert not _weights_equal(first.model, ga.fit(sd, groups, cfg, seed=4).model)
    base = baseline.BaselineConfig(backbone_kwargs=SMALL, train=_train())
    assert _weights_equal(baseline.fit(sd, groups, base, seed=3).model, baseline.fit(sd, groups, base, seed=3).model)


def _baseline_and_outer_lr_one(toy, train: TrainConfig, seed: int):
    """The baseline and alignment with random grouping, outer_lr 1 and 3 inner batches (plain
    training on the same batches), both GRU4Rec under ``train`` at ``seed``."""
    sd, groups = toy
    base = baseline.fit(sd, groups, baseline.BaselineConfig(backbone="gru4rec", backbone_kwargs=SMALL,
                                                            train=train), seed=seed)
    cfg = ga.GradientAlignmentConfig(backbone="gru4rec", backbone_kwargs=SMALL, train=train,
                                     use_adversarial=False, grouping="random", outer_lr=1.0,
                                     inner_steps=3)
    return base, ga.fit(sd, groups, cfg, seed=seed)


@pytest.mark.parametrize("warmup", [0, 5])
def test_random_grouping_with_outer_lr_one_is_sequential_training(toy, warmup):
    """With outer_lr 1 the alignment variant is plain training on the same batches, including the
    learning-rate warm-up, which it counts in inner batches as the baseline counts steps."""
    base, res = _baseline_and_outer_lr_one(toy, replace(_train(), warmup_steps=warmup), seed=1)
    assert res.variant == "gru4rec +align"
    assert _weights_equal(res.model, base.model)


@pytest.mark.parametrize("stop", [dict(rung=1), dict(patience=1, min_steps=12)])
def test_warm_up_min_steps_and_rung_count_inner_batches(toy, stop):
    """18 windows in batches of 3: 6 batches an epoch, 2 outer updates of 3 inner batches. With
    outer_lr 1 alignment is the baseline's training, so a warm-up of 12 batches, min_steps of 12
    batches and a rung of one validation past the warm-up must end both runs at the same batch
    with the same weights (counted in outer updates, alignment would train 3 times longer)."""
    base, res = _baseline_and_outer_lr_one(toy, _train(epochs=30, batch_size=3, warmup_steps=12, **stop), seed=2)
    assert base.train.steps < 30 * 6                          # stopped by the rung or patience
    assert res.train.steps * 3 == base.train.steps
    assert res.train.stopped == base.train.stopped
    assert _weights_equal(res.model, base.model)
    # the history logs each epoch's last rate on the batch clock, the baseline's
    assert res.history["lr"].tolist() == pytest.approx(base.history["lr"].tolist())
    assert res.history["lr"].iloc[0] < res.history["lr"].max()           # the warm-up is in it


@pytest.mark.parametrize("in_batches, outer_updates", [(True, 2), (False, 9)])
def test_step_cap_counts_batches_unless_told_otherwise(toy, in_batches, outer_updates):
    """A cap of 9 steps with 4 inner batches: 2 outer updates (8 batches, like the base model's
    9 at most), or 9 outer updates when the cap counts outer updates."""
    sd, groups = toy
    cfg = ga.GradientAlignmentConfig(backbone_kwargs=SMALL, train=_train(epochs=50, max_steps=9),
                                     inner_steps=4, use_adversarial=False, grouping="random",
                                     max_steps_in_batches=in_batches)
    assert ga.fit(sd, groups, cfg, seed=0).train.steps == outer_updates


@pytest.mark.parametrize("inner_optimizer", ["adam", "sgd"])
def test_fit_end_to_end_with_both_parts(toy, inner_optimizer):
    sd, groups = toy
    cfg = ga.GradientAlignmentConfig(backbone_kwargs=SMALL, train=_train(), inner_steps=2,
                                     inner_optimizer=inner_optimizer, conflict_every=2,
                                     conflict_batch=4)
    res = ga.fit(sd, groups, cfg, seed=0)
    assert res.variant == "sasrec GA" and res.method == "gradient_alignment"
    disc = res.diagnostics["discriminator"]
    assert {"step", "epoch", "accuracy", "loss"} <= set(disc.columns)
    assert len(disc) == res.train.steps and disc["accuracy"].between(0, 1).all()
    assert np.isfinite(disc["loss"]).all()
    assert {"step", "epoch", "layer", "cosine"} <= set(res.diagnostics["conflict"].columns)
    assert np.isfinite(res.ndcg10("tail"))


def test_resume_restores_discriminator_and_logs(toy, tmp_path):
    sd, groups = toy

    def run(epochs, ckpt):
        cfg = ga.GradientAlignmentConfig(backbone_kwargs=SMALL, inner_steps=2,
                                         train=_train(epochs=epochs, checkpoint_dir=str(ckpt)))
        return ga.fit(sd, groups, cfg, seed=0)

    full = run(2, tmp_path / "a")
    run(1, tmp_path / "b")
    resumed = run(2, tmp_path / "b")
    assert _weights_equal(full.model, resumed.model)
    assert full.diagnostics["discriminator"].equals(resumed.diagnostics["discriminator"])


def _probed(method: str, train: TrainConfig):
    """A config of ``method`` that probes head-vs-tail gradients every step."""
    if method == "baseline":
        return baseline.BaselineConfig(backbone_kwargs=SMALL, train=train, conflict_every=1, conflict_batch=4)
    if method == "intervened":
        from seqtransfer.methods import intervened
        return intervened.IntervenedConfig(backbone_kwargs=SMALL, train=train, use_plugins=False,
                                           n_strata=2, conflict_every=1, conflict_batch=4)
    return ga.GradientAlignmentConfig(backbone_kwargs=SMALL, inner_steps=2, train=train,
                                      conflict_every=1, conflict_batch=4)


@pytest.mark.parametrize("method", ["baseline", "gradient_alignment", "intervened"])
def test_a_resumed_run_keeps_its_conflict_probe_rows(toy, tmp_path, method):
    """A run continued from its checkpoint (a halving rung's winner, a killed run) records the
    probe rows of its first steps and the same later ones as a run never stopped. The 60d60a3
    batch's 01/02 heatmaps lost seed 0's steps 0-100 this way: the baseline kept no probe state."""
    sd, groups = toy
    from seqtransfer.methods import intervened
    fit = {"baseline": baseline.fit, "gradient_alignment": ga.fit, "intervened": intervened.fit}[method]

    def run(epochs, ckpt):
        return fit(sd, groups, _probed(method, _train(epochs=epochs, checkpoint_dir=str(ckpt))), seed=0)

    whole = run(2, tmp_path / "a").diagnostics["conflict"]
    first = run(1, tmp_path / "b").diagnostics["conflict"]
    resumed = run(2, tmp_path / "b").diagnostics["conflict"]
    assert 0 < first["step"].max() < whole["step"].max()
    assert resumed["step"].min() == 0
    pd.testing.assert_frame_equal(resumed.reset_index(drop=True), whole.reset_index(drop=True))


@pytest.mark.parametrize("field, value, words", [
    ("inner_steps", 0, ["inner_steps", ">= 1"]),
    ("grouping", "by_user", ["grouping", "alternate", "random"]),
    ("inner_optimizer", "rmsprop", ["inner_optimizer", "adam", "sgd"]),
    ("outer_lr", 1.5, ["outer_lr", "(0, 1]"]),
    ("adv_scale", -1.0, ["adv_scale"]),
    ("backbone", "bert4rec", ["backbone", "sasrec"]),
    ("adv_pass", "twice", ["adv_pass", "shared", "separate"]),
])
def test_invalid_config_raises_naming_field_and_choices(toy, field, value, words):
    sd, groups = toy
    cfg = replace(ga.GradientAlignmentConfig(train=_train()), **{field: value})
    with pytest.raises(ValueError) as err:
        ga.fit(sd, groups, cfg)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_the_adversary_on_the_loss_pass_trains_as_on_a_pass_of_its_own(toy):
    """Without dropout in the encoder the state the loss's pass leaves at the last real position
    is the one ``represent`` computes, so both ``adv_pass`` recipes train the same weights and
    the same discriminator; the shared pass only saves the second encoder pass (and, with
    dropout, shares its draw). Plain-SGD inner steps: Adam would blow the float rounding of the
    two summation orders (1e-8) up to 1e-5 on parameters whose gradient is near zero."""
    sd, groups = toy
    out = {}
    for adv_pass in ga.ADV_PASSES:
        cfg = ga.GradientAlignmentConfig(backbone_kwargs={**SMALL, "dropout": 0.0}, train=_train(epochs=3),
                                         inner_steps=2, inner_optimizer="sgd", adv_pass=adv_pass)
        out[adv_pass] = ga.fit(sd, groups, cfg, seed=0)
    a, b = out["shared"], out["separate"]
    assert a.train.steps == b.train.steps > 0
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    assert a.diagnostics["discriminator"]["loss"].to_numpy() == pytest.approx(
        b.diagnostics["discriminator"]["loss"].to_numpy(), rel=1e-4)


def test_representations_and_pca_shapes(toy):
    sd, groups = toy
    torch.manual_seed(0)
    from seqtransfer.models import make_backbone
    model = make_backbone("sasrec", sd.n_items, max_len=5, **SMALL).train()
    reps = representations(model, sd, "test", batch_size=5)
    assert reps.shape == (sd.n_users, 8) and torch.isfinite(reps).all()
    assert model.training                                   # mode restored
    xy = pca_2d(reps)
    assert xy.shape == (sd.n_users, 2)
    np.testing.assert_allclose(xy.mean(0), 0.0, atol=1e-9)
    line = np.outer(np.arange(6.0), [1.0, 2.0, 0.0])        # points on a line: one component
    np.testing.assert_allclose(np.abs(pca_2d(line)[:, 0]), np.abs(np.arange(6.0) - 2.5) * np.sqrt(5))


def test_activeness_probe_finds_a_linear_signal_and_not_noise():
    from seqtransfer.diagnostics import activeness_probe
    rng = np.random.default_rng(0)
    head = rng.random(600) < 0.2                            # imbalanced, like head vs tail
    noise = rng.normal(size=(600, 8))
    chance = activeness_probe(noise, head, seed=0)
    assert 0.35 < chance < 0.65                             # balanced accuracy: chance is 0.5
    signal = noise.copy()
    signal[:, 2] += 4.0 * head                              # one direction encodes activeness
    assert activeness_probe(torch.as_tensor(signal), head, seed=0) > 0.95
    assert activeness_probe(signal, head, seed=3) == activeness_probe(signal, head, seed=3)
    with pytest.raises(ValueError, match="head"):
        activeness_probe(noise, np.zeros(600, dtype=bool))


def test_discriminator_curves_and_projection_scatter():
    import pandas as pd

    from seqtransfer import plots
    disc = pd.DataFrame({"step": [0, 1, 2] * 2, "accuracy": [0.9, 0.7, 0.5, 0.8, 0.6, 0.5],
                         "loss": [0.4, 0.6, 0.69, 0.5, 0.6, 0.7], "variant": ["a"] * 3 + ["b"] * 3})
    fig = plots.discriminator_curves(disc, smooth=2)
    assert len(fig.data) == 4                               # accuracy and loss per variant
    np.testing.assert_allclose(fig.data[0].y, [0.9, 0.8, 0.6])   # trailing mean over 2 steps
    head = np.arange(5000) % 5 == 0
    points = {"x": np.random.default_rng(1).normal(size=(5000, 2)), "y": np.zeros((5000, 2))}
    fig = plots.projection_scatter(points, head, max_points=2000, seed=0)
    assert sum(len(t.x) for t in fig.data) == 2 * 2000       # the same 2000 users per panel
    assert [t.name for t in fig.data] == ["tail", "head"] * 2
    again = plots.projection_scatter(points, head, max_points=2000, seed=0)
    np.testing.assert_array_equal(fig.data[0].x, again.data[0].x)   # fixed seed, same sample
    with pytest.raises(ValueError, match="shape"):
        plots.projection_scatter({"bad": np.zeros((10, 2))}, head)
