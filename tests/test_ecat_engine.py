"""ECAT on the run engine, on the toy entire space of test_ecat: the wiring between stages.

Each period's student reads its own period's teacher and its own period's data; the weights
the selection computes reach the student's pool; an arm never changes the teacher runs other
arms build on; a student killed and re-run replays its finished periods from their checkpoints;
and the runs of a setting train through ``Experiment.run`` with the teachers as upstream runs.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from seqtransfer import data as D
from seqtransfer.methods import ecat, stopped_by_cap
from test_ecat import _cfg, _setting

pytestmark = pytest.mark.unit


def _record_periods(monkeypatch):
    """Wrap student_hooks: per period, the teacher it was given and the pool (inputs, targets,
    weights) it trains on."""
    seen = []
    real = ecat.periods.student_hooks

    def spy(inputs, targets, weights, teacher, cfg, alphas, domain=None):
        seen.append({"teacher": teacher, "x": inputs.clone(), "y": targets.clone(), "w": weights.clone()})
        return real(inputs, targets, weights, teacher, cfg, alphas, domain)

    monkeypatch.setattr(ecat.periods, "student_hooks", spy)
    return seen


def test_every_period_reads_its_own_teacher_and_its_own_data(monkeypatch):
    s = _setting()
    cfg = _cfg(n_periods=2, top_m=0.5, p_min=0.0)
    teachers, _ = ecat.train_teachers(s, cfg)
    seen = _record_periods(monkeypatch)
    ecat.continual(s, cfg, 0, teachers, cache={})
    cuts = ecat.period_cuts(s.times, 2)
    for t, rec in enumerate(seen):
        # the teacher of period t: a copy of teachers[t] (same weights, another object)
        assert rec["teacher"] is not teachers[t]
        for a, b in zip(rec["teacher"].state_dict().values(), teachers[t].state_dict().values()):
            assert torch.equal(a.cpu(), b.cpu())
        other = teachers[1 - t].state_dict()
        assert any(not torch.equal(a.cpu(), other[k].cpu()) for k, a in rec["teacher"].state_dict().items())
        # the target part of the pool: the target's windows up to this period's end, nothing later
        own = D.build_sequences(ecat.truncate(s.target.split, s.target_times, cuts[t]), s.target.data.max_len)
        n = len(own.train_inputs)
        assert torch.equal(rec["x"][:n], own.train_inputs) and torch.equal(rec["y"][:n], own.train_targets)
        # the entire-space part: windows of the entire space up to this period's end only
        space = D.build_sequences(ecat.truncate(s.split, s.times, cuts[t]), s.target.data.max_len)
        rows = {tuple(r) for r in space.train_inputs.tolist()}
        assert all(tuple(r) in rows for r in rec["x"][n:].tolist())
    assert len(seen[0]["x"]) < len(seen[1]["x"])


def test_the_selection_weights_reach_the_students_pool(monkeypatch):
    """The pool's entire-space rows carry exactly the weights select() returned (a pool that
    dropped or flattened them fails), and the step's loss reads them."""
    s = _setting()
    cfg = _cfg(n_periods=1, top_m=0.5, fine="none", distill="none")
    picked = {}
    real_select = ecat.periods.select

    def fixed(setting, split, windows, teacher, c, seed=0):
        w, stats = real_select(setting, split, windows, teacher, c, seed)
        w = torch.where(w > 0, torch.linspace(0.5, 2.0, w.numel()).reshape(w.shape), w)   # unequal weights
        picked["w"], picked["rows"] = w, (w > 0).any(1)
        picked["x"] = windows.train_inputs
        return w, stats

    monkeypatch.setattr(ecat.periods, "select", fixed)
    seen = _record_periods(monkeypatch)
    ecat.continual(s, cfg, 0, None, cache={})
    n = len(s.target.data.train_inputs)   # one period: all of the target's windows
    pool_w = seen[0]["w"][n:]
    assert torch.equal(pool_w, picked["w"][picked["rows"]]) and torch.equal(seen[0]["x"][n:], picked["x"][picked["rows"]])
    assert torch.equal(seen[0]["w"][:n], (seen[0]["y"][:n] > 0).float())      # target positions weigh 1
    assert len(torch.unique(pool_w[pool_w > 0])) > 1


def test_an_arm_never_changes_the_teachers_it_reads():
    """Fine-tuning starts from the last teacher and trains every weight of its copy; ECAT reads
    both; afterwards the teacher models (weights and requires_grad) are as they were, so the
    next arm starts from the same teachers."""
    s = _setting()
    cfg = _cfg(n_periods=2, top_m=0.5, p_min=0.0)
    teachers, _ = ecat.train_teachers(s, cfg)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in teachers]
    flags = [[p.requires_grad for p in m.parameters()] for m in teachers]
    ecat.continual(s, replace(cfg, **ecat.VARIANTS["pre-train + fine-tune"]), 0, teachers[-1:], cache={})
    ecat.continual(s, cfg, 0, teachers, cache={})
    for m, b, f in zip(teachers, before, flags):
        assert all(torch.equal(m.state_dict()[k], v) for k, v in b.items())
        assert [p.requires_grad for p in m.parameters()] == f


def test_a_killed_student_replays_its_finished_periods(tmp_path):
    """With a checkpoint folder every period checkpoints in its own subfolder; a re-run with the
    same folder replays the periods from their checkpoints (no step trained again) and ends with
    the same model and the same distillation weights."""
    s = _setting()
    cfg = _cfg(n_periods=2, top_m=0.5, p_min=0.0)
    teachers, _ = ecat.train_teachers(s, cfg)
    ck = replace(cfg, train=replace(cfg.train, checkpoint_dir=str(tmp_path / "ck")))
    a, da = ecat.continual(s, ck, 0, teachers, cache={})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["period-0", "period-1"]
    b, db = ecat.continual(s, ck, 0, teachers, cache={})
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(x, y)
    assert np.array_equal(da["alpha"]["alpha"], db["alpha"]["alpha"]) and len(da["alpha"])
    assert db["history"].equals(da["history"])


def test_teacher_outputs_once_per_period_train_the_same_student():
    """A student whose teacher outputs come once per period (the default) trains as one whose
    step runs the teacher: the same losses, distillation weights and weights up to float
    rounding, through two periods of two teachers."""
    s = _setting()
    cfg = _cfg(n_periods=2, top_m=0.5, p_min=0.0, lam=0.5)
    cfg = replace(cfg, train=replace(cfg.train, max_steps=6, epochs=2))
    teachers, _ = ecat.train_teachers(s, cfg)
    a, da = ecat.continual(s, cfg, 0, teachers, cache={})
    b, db = ecat.continual(s, replace(cfg, teacher_outputs="step"), 0, teachers, cache={})
    assert len(da["alpha"]) and np.allclose(da["alpha"]["alpha"], db["alpha"]["alpha"], atol=1e-5)
    assert np.allclose(da["history"]["loss"], db["history"]["loss"], rtol=1e-4)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-4)


def test_the_runs_of_a_setting_on_the_engine(tmp_path):
    """Through Experiment.run: the teachers train once (one seed, their own one-value grid),
    every variant every seed with the call's grid; the teacher runs early-stop on the entire
    space's validation, and a cap that ends one is named; a second call finds everything cached."""
    s = _setting()
    s.target.cache_dir = tmp_path
    cfg = _cfg(n_periods=2, top_m=0.5, p_min=0.0)
    cfg = replace(cfg, train=replace(cfg.train, max_steps=None, epochs=3, patience=1),
                  teacher_train=replace(cfg.train, max_steps=None, epochs=40, patience=1, lr=1e-9, warmup_steps=0))
    variants = {k: ecat.VARIANTS[k] for k in ("ECAT", "target-only")}
    spec = ecat.runs(s, cfg, variants, label="toy")
    out = s.target.run(spec, seeds=[0, 1], lr_grid=(1e-3, 3e-3))
    assert [(r.variant, r.seed) for r in out] == [("toy | teacher 1/2", 0), ("toy | teacher 2/2", 0),
                                                  ("toy | ECAT", 0), ("toy | ECAT", 1),
                                                  ("toy | target-only", 0), ("toy | target-only", 1)]
    assert all(len(r.tuning) == 1 for r in out[:2]) and all(list(r.tuning["lr"]) == [1e-3, 3e-3] for r in out[2:])
    for r in out[:2]:            # lr 1e-9: validation never improves, patience 1 stops it at once
        assert r.train.stopped.startswith("early stop") and not stopped_by_cap(r) and len(r.history) == 2
    again = s.target.run(spec, seeds=[0, 1], lr_grid=(1e-3, 3e-3))
    assert [r.train.seconds for r in again] == [r.train.seconds for r in out]      # loaded, not re-trained
    with pytest.raises(ValueError, match="needs the setting"):
        ecat.fit(s.target.data, s.target.groups, cfg, 0)


def test_halving_takes_the_students_rung_in_its_first_period_and_continues_it(tmp_path, monkeypatch):
    """Successive halving on ECAT's period-by-period student: each rate's rung is its first
    period's first validation (no later period trains), the best rung continues from its
    checkpoint (the steps it trained are not trained again) through every period, and the run it
    ends with is the whole grid's run at that rate, bit for bit."""
    steps = []
    real = ecat.periods.student_hooks

    def counting(*a, **k):
        hooks = real(*a, **k)
        inner = hooks.step

        def step(ctx):
            steps.append(ctx.step)
            return inner(ctx)
        hooks.step = step
        return hooks

    monkeypatch.setattr(ecat.periods, "student_hooks", counting)
    cfg = _cfg(n_periods=2, top_m=0.5, p_min=0.0)
    cfg = replace(cfg, train=replace(cfg.train, max_steps=None, epochs=4, patience=2, warmup_steps=0),
                  teacher_train=replace(cfg.train, max_steps=None, epochs=2, patience=1, warmup_steps=0))
    grid = (1e-3, 3e-2)
    made = {}
    for name, rung in (("grid", None), ("halving", 1)):
        s = _setting()
        s.target.cache_dir = tmp_path / name
        s.target.budget = replace(s.target.budget, rung=rung, keep=1)
        spec = ecat.runs(s, cfg, {"ECAT": {}}, label="toy")
        steps.clear()
        made[name] = s.target.run(spec, seeds=[0], lr_grid=grid), list(steps)
    out, trained = made["halving"]
    rungs = [torch.load(p, weights_only=False) for p in sorted((tmp_path / "halving").glob("toy_|_ECAT_(rung_1)-0-*.pt"))]
    assert len(rungs) == 2
    for r in rungs:                      # the first period only, stopped at its first validation
        assert set(r.history["period"]) == {0} and r.train.stopped == "rung=1" and len(r.history) == 1
    chosen = out[-1]
    assert chosen.tuning["search"].tolist() == ["rung of 1"] * 2
    best_rung = max(rungs, key=lambda r: r.ndcg10("all", "valid"))
    assert chosen.lr == pytest.approx(float(best_rung.history["lr"].max()))
    s = _setting()
    s.target.cache_dir = tmp_path / "grid"
    same = s.target.run(ecat.runs(s, cfg, {"ECAT": {}}, label="toy"), seeds=[0], lr_grid=(chosen.lr,))[-1]
    for k, v in same.model.state_dict().items():
        assert torch.equal(v, chosen.model.state_dict()[k]), k
    assert set(chosen.history["period"]) == {0, 1} and chosen.history.equals(same.history.assign(
        seconds=chosen.history["seconds"], cpu_seconds=chosen.history["cpu_seconds"],
        eval_seconds=chosen.history["eval_seconds"]))
    # steps: every rate's rung, then only the continued run's steps after its rung
    rung_steps = {round(float(r.history["lr"].max()), 12): int(r.history["step"].iloc[-1]) for r in rungs}
    whole_steps = int(same.diagnostics["stages"]["steps"].sum())
    assert len(trained) == sum(rung_steps.values()) + whole_steps - rung_steps[round(chosen.lr, 12)]


def test_a_settings_preparation_time_never_reaches_a_cache_key():
    """The setting is every variant's constant: its digest (the cache key's part) reads what the
    runs train on, not the seconds its preparation took, so a notebook re-run after a killed
    kernel finds the finished runs (it did not when ``seconds`` was digested)."""
    from seqtransfer.experiment import digest
    s = _setting()
    a, b = replace(s, seconds={"data": 1.0}), replace(s, seconds={"data": 2.5})
    assert digest(a) == digest(b)
    # nor where its target experiment runs from: progress bars, executor, cache folder
    elsewhere = replace(s, target=replace(s.target, progress=not s.target.progress, executor="ray",
                                          cache_dir="/tmp/elsewhere"), seconds={"data": 1.0})
    assert digest(elsewhere) == digest(a)
    moved = replace(s, seconds={"data": 1.0}, target_items=~s.target_items)
    assert digest(moved) != digest(a)
    cfg = _cfg(n_periods=1, fine="none", distill="none")
    keys = [s.target._cache_key(ecat.runs(x, cfg, {"target-only": ecat.VARIANTS["target-only"]})["target-only"],
                                cfg, "target-only", 0, []) for x in (a, b)]
    assert keys[0] == keys[1]
