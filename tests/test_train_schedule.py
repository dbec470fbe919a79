"""The learning-rate schedule of the training loop: warm-up and plateau decay."""
import numpy as np
import pytest
import torch

from seqtransfer import data
from seqtransfer.methods import baseline
from seqtransfer.train import TrainConfig, lr_at

pytestmark = pytest.mark.unit


def test_warmup_rises_linearly_then_holds_and_scales():
    cfg = TrainConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(cfg, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(cfg, 1, scale=0.5) == 0.25
    assert lr_at(TrainConfig(lr=2.0, warmup_steps=0), 0) == 2.0


def test_plateau_decay_halves_the_rate_after_each_evaluation_without_improvement(toy_csv):
    sd = data.build_sequences(data.leave_one_out(data.load(toy_csv, min_user=1, min_item=1)), max_len=6)
    groups = data.activeness_groups(sd.activeness)
    # a learning rate so small that validation never improves after the first evaluation
    cfg = baseline.BaselineConfig(backbone="gru4rec", backbone_kwargs={"dim": 8},
                                  train=TrainConfig(epochs=4, batch_size=4, lr=1e-12, plateau_factor=0.5,
                                                    patience=10, progress=False, device="cpu"))
    h = baseline.fit(sd, groups, cfg, seed=0).history
    # epoch 0 improves on nothing-yet; epochs 1, 2 do not improve, so epochs 2 and 3 run slower
    assert np.allclose(h["lr"], [1e-12, 1e-12, 5e-13, 2.5e-13], rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="plateau_factor"):
        baseline.fit(sd, groups, baseline.BaselineConfig(train=TrainConfig(plateau_factor=0.0)), seed=0)


def test_evaluations_before_min_steps_do_not_count_toward_patience(toy_csv):
    """Validation never improves after epoch 0 (lr 1e-12). Patience 2 alone stops after epoch 2;
    with min_steps the evaluations of epochs ending before that step do not count, so training
    runs until two counted evaluations after it."""
    sd = data.build_sequences(data.leave_one_out(data.load(toy_csv, min_user=1, min_item=1)), max_len=6)
    groups = data.activeness_groups(sd.activeness)

    def run(**kw):
        cfg = baseline.BaselineConfig(backbone="gru4rec", backbone_kwargs={"dim": 8},
                                      train=TrainConfig(epochs=20, batch_size=4, lr=1e-12, patience=2,
                                                        plateau_factor=0.5, progress=False, device="cpu", **kw))
        return baseline.fit(sd, groups, cfg, seed=0)

    plain = run()
    per_epoch = int(plain.history["step"].iloc[0])
    assert len(plain.history) == 3 and plain.train.stopped.startswith("early stop")
    late = run(min_steps=4 * per_epoch)                  # epochs 0-2 end before it, epoch 3 ends on it
    assert len(late.history) == 5 and late.train.stopped.startswith("early stop") and late.train.best_epoch == 0
    assert np.allclose(late.history["lr"], [1e-12] * 4 + [5e-13], rtol=1e-9, atol=0)   # no decay before it
    with pytest.raises(ValueError, match="min_steps"):
        run(min_steps=-1)


def test_fit_warmup_shortens_the_warmup_of_a_small_target_only():
    from seqtransfer.train import fit_warmup
    cfg = TrainConfig(warmup_steps=100, min_steps=0)
    small = fit_warmup(cfg, steps_per_epoch=10)                # Film-Noir: ten steps an epoch
    assert (small.warmup_steps, small.min_steps) == (20, 20)
    big = fit_warmup(cfg, steps_per_epoch=400)                 # a big target keeps the budget's
    assert (big.warmup_steps, big.min_steps) == (100, 100)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        fit_warmup(cfg, steps_per_epoch=0)


def test_a_rung_stops_after_its_validations_past_the_warm_up_and_the_run_continues_from_it(tmp_path, toy_csv):
    """Successive halving's short run: ``rung=2`` with a 3-step warm-up stops after the second
    validation at or past step 3, and the same run without the rung resumes from its checkpoint
    to exactly the model an uninterrupted run gives."""
    from seqtransfer import data
    from seqtransfer.models import make_backbone
    from seqtransfer.train import fit
    sd = data.build_sequences(data.leave_one_out(data.load(toy_csv, min_user=1, min_item=1)), max_len=5)
    base = dict(batch_size=4, progress=False, patience=100, lr=1e-2, warmup_steps=3, epochs=8)

    def run(ckpt, **kw):
        torch.manual_seed(0)
        m = make_backbone("sasrec", sd.n_items, dim=8, n_heads=1, max_len=5)
        return fit(m, sd, TrainConfig(checkpoint_dir=str(ckpt), **{**base, **kw}))

    whole = run(tmp_path / "whole")
    steps = whole.history["step"].tolist()
    past = [i for i, s in enumerate(steps) if s >= 3]               # validations past the warm-up
    short = run(tmp_path / "h", rung=2)
    assert short.stopped == "rung=2" and len(short.history) == past[1] + 1
    assert run(tmp_path / "h", rung=2).stopped == "rung=2 (resumed)"   # a re-run stops at once
    resumed = run(tmp_path / "h")
    assert resumed.history["step"].tolist() == steps and resumed.stopped == whole.stopped
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    with pytest.raises(ValueError, match="rung must be at least one validation"):
        run(tmp_path / "bad", rung=0)
