"""experiment.prepare and Experiment.run: the run cache and runs that build on earlier runs."""
import numpy as np
import pandas as pd
import pytest
import torch

from seqtransfer import experiment
from seqtransfer.budget import get_budget
from seqtransfer.methods import baseline, intervened
from seqtransfer.methods.common import MethodResult

pytestmark = pytest.mark.unit

CALLS: list[tuple] = []


def fake_fit(data, groups, cfg, seed=0, variant=None, stage1=None):
    """Records its calls; the result's metric is the config's value plus stage1's."""
    CALLS.append((variant, seed, None if stage1 is None else stage1.variant))
    value = cfg["value"] + (0 if stage1 is None else stage1.metrics["value"].iloc[0])
    return MethodResult("fake", variant, seed, pd.DataFrame({"value": [value]}), pd.DataFrame(),
                        torch.nn.Linear(1, 1))


@pytest.fixture
def exp(toy_csv, tmp_path):
    budget = get_budget("smoke", max_users=None, max_len=6, dim=8, n_seeds=2)
    CALLS.clear()
    return experiment.prepare(str(toy_csv), budget, seed=0, device="cpu", head_frac=0.25, min_user=1,
                              min_item=1, progress=False, cache=str(tmp_path / "runs"))


def test_finished_runs_are_loaded_not_retrained(exp):
    first = exp.run({"a": (fake_fit, {"value": 1.0})})
    assert CALLS == [("a", 0, None), ("a", 1, None)]
    again = exp.run({"a": (fake_fit, {"value": 1.0})})
    assert len(CALLS) == 2 and [r.metrics["value"].iloc[0] for r in again] == [1.0, 1.0]
    exp.run({"a": (fake_fit, {"value": 2.0})})                        # another config: trained
    assert len(CALLS) == 4 and len(first) == 2


def test_a_run_gets_the_same_seed_result_of_the_run_it_builds_on(exp):
    runs = {"a": (fake_fit, {"value": 1.0}), "b": (fake_fit, {"value": 10.0}, {"stage1": "a"})}
    out = exp.run(runs)
    assert CALLS == [("a", 0, None), ("a", 1, None), ("b", 0, "a"), ("b", 1, "a")]
    assert [(r.variant, r.seed, r.metrics["value"].iloc[0]) for r in out] == [
        ("a", 0, 1.0), ("a", 1, 1.0), ("b", 0, 11.0), ("b", 1, 11.0)]
    # a changed upstream run invalidates the cached downstream run
    out = exp.run({"a": (fake_fit, {"value": 2.0}), "b": (fake_fit, {"value": 10.0}, {"stage1": "a"})})
    assert out[-1].metrics["value"].iloc[0] == 12.0 and CALLS[-1] == ("b", 1, "a")


def test_bad_run_specs_are_clear_errors(exp):
    with pytest.raises(ValueError, match=r"'b' takes stage1='a', which must be a variant listed before"):
        exp.run({"b": (fake_fit, {"value": 1.0}, {"stage1": "a"}), "a": (fake_fit, {"value": 1.0})})
    with pytest.raises(ValueError, match=r"\(fit, config\), \(fit, config, inputs\) or a Run"):
        exp.run({"a": (fake_fit,)})


def test_plugins_on_the_cached_base_model_match_plugins_trained_from_scratch(exp):
    """The notebook's wiring: plugins on the finished joint run equal a full two-stage fit."""
    kw = dict(backbone="sasrec", backbone_kwargs={"n_heads": 1, "n_layers": 1})
    runs = {"joint": (baseline.fit, exp.config(baseline.BaselineConfig, conflict_every=2, conflict_batch=4, **kw)),
            "plugins": (intervened.fit, exp.config(intervened.IntervenedConfig, use_aggregation=False, **kw),
                        {"stage1": "joint"})}
    joint, _, plugins, _ = exp.run(runs)
    scratch = intervened.fit(exp.data, exp.groups, runs["plugins"][1], seed=0, variant="plugins")
    assert plugins.metrics["value"].tolist() == scratch.metrics["value"].tolist()
    assert "conflict" in plugins.diagnostics and set(plugins.history["stage"]) == {"backbone", "plugins"}
    assert all(p.requires_grad for p in joint.model.parameters())      # the joint model is untouched


def lr_fit(data, groups, cfg, seed=0, variant=None, stage1=None):
    """Validation NDCG@10 peaks at lr 3e-3 for "a" and 6e-3 for "b"; test ranks them the other
    way, so selecting on test would show."""
    CALLS.append((variant, seed, cfg.train.lr))
    valid = 0.2 - abs(cfg.train.lr - 3e-3) * 10 + (0.04 if variant == "b" and cfg.train.lr == 6e-3 else 0)
    metrics = pd.DataFrame({"split": ["valid", "test"], "group": "all", "metric": "ndcg", "k": 10,
                            "value": [valid, 1.0 - valid]})
    return MethodResult("fake", variant, seed, metrics, pd.DataFrame(), torch.nn.Linear(1, 1))


def test_every_arm_gets_its_learning_rate_from_the_same_grid_on_validation(exp):
    cfg = baseline.BaselineConfig(train=exp.train_config())
    out = exp.run({"a": (lr_fit, cfg), "b": (lr_fit, cfg)}, lr_grid=(1.5e-3, 3e-3, 6e-3))
    # seed 0 searches the grid (every arm's first, as nothing waits on them), seed 1 reuses the
    # chosen value
    assert CALLS == [("a", 0, 1.5e-3), ("a", 0, 3e-3), ("a", 0, 6e-3), ("b", 0, 1.5e-3),
                     ("b", 0, 3e-3), ("b", 0, 6e-3), ("a", 1, 3e-3), ("b", 1, 6e-3)]
    assert [(r.variant, r.seed, r.lr) for r in out] == [("a", 0, 3e-3), ("a", 1, 3e-3), ("b", 0, 6e-3), ("b", 1, 6e-3)]
    t = out[0].tuning
    assert t["lr"].tolist() == [1.5e-3, 3e-3, 6e-3] and t["chosen"].tolist() == [False, True, False]
    assert t["valid_ndcg10"].tolist() == pytest.approx([0.185, 0.2, 0.17])
    with pytest.raises(ValueError, match="lr_grid must hold positive"):
        exp.run({"a": (lr_fit, cfg)}, lr_grid=())


def test_an_explicit_one_value_grid_is_the_learning_rate_every_arm_trains_with(exp):
    """Re-training an arm at the rate a notebook chose (``lr_grid=(6e-3,)``) must train at 6e-3,
    not at the config's own (the budget's 3e-3)."""
    cfg = baseline.BaselineConfig(train=exp.train_config())
    assert cfg.train.lr == 3e-3
    out = exp.run({"b": (lr_fit, cfg)}, lr_grid=(6e-3,))
    assert CALLS == [("b", 0, 6e-3), ("b", 1, 6e-3)]
    assert [r.lr for r in out] == [6e-3, 6e-3]
    CALLS.clear()
    exp.run({"a": (lr_fit, cfg)})                  # the budget's one-value grid: the config's own rate
    assert CALLS == [("a", 0, 3e-3), ("a", 1, 3e-3)]


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "run.pt"
    path.with_suffix(".lock").write_text("999999999")                 # no such process
    with experiment._claim(path, poll=0.01):
        assert path.with_suffix(".lock").read_text() == str(__import__("os").getpid())
    assert not path.with_suffix(".lock").exists()


def test_a_run_another_process_is_training_is_not_waited_for_while_others_can_go(exp):
    """Two notebooks of one batch share the cache: while another process holds run "a", this
    one trains "b" first, then waits for "a" (here the other process dies, so it trains it)."""
    import os
    import threading
    from seqtransfer.experiment import Run
    cfg = {"value": 1.0}
    key = exp._cache_key(Run(fake_fit, cfg), cfg, "a", 0, [])
    lock = exp.cache_dir / f"a-0-{key[:16]}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("1")                                   # held by a live process (init)
    assert exp._run_one(Run(fake_fit, cfg), "a", 0, {}, [], wait=False) is None and CALLS == []
    threading.Timer(1.0, lambda: lock.unlink()).start()    # the other process lets go
    exp.run({"a": (fake_fit, cfg), "b": (fake_fit, {"value": 2.0})}, seeds=[0])
    assert CALLS == [("b", 0, None), ("a", 0, None)]
    assert not os.path.exists(lock)


def test_executor_choices_and_cluster_addresses_are_clear_errors(toy_csv, monkeypatch):
    """Unknown executor, an address nothing listens on, a malformed address, Ray missing: each
    fails in prepare (before any data work) with the fix; none needs a running Ray."""
    from seqtransfer import executor

    kw = dict(budget="smoke", device="cpu", min_user=1, min_item=1, progress=False)
    with pytest.raises(ValueError, match=r"unknown executor 'dask'; choose one of local, ray"):
        experiment.prepare(str(toy_csv), executor="dask", **kw)
    pytest.importorskip("ray")
    import ray
    if ray.is_initialized():                      # connect() reuses a running Ray: test a fresh one
        pytest.skip("a Ray instance is running in this process")
    import socket
    with socket.socket() as s:                    # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"cannot reach the Ray cluster at '127.0.0.1:{port}'.*"
                                              r"ray start --head.*executor=\"local\""):
        experiment.prepare(str(toy_csv), executor="ray", ray_address=f"127.0.0.1:{port}", **kw)
    with pytest.raises(ValueError, match=r"ray_address 'headnode' is not an address"):
        experiment.prepare(str(toy_csv), executor="ray", ray_address="headnode", **kw)
    with pytest.raises(ValueError, match=r"cpus_per_run must be positive"):
        experiment.prepare(str(toy_csv), executor="ray", ray_cpus_per_run=0, **kw)
    monkeypatch.setitem(__import__("sys").modules, "ray", None)        # as if not installed
    with pytest.raises(ImportError, match=r"executor='ray' needs Ray.*pip install -e '.\[ray\]'"):
        experiment.prepare(str(toy_csv), executor="ray", **kw)
    assert not ray.is_initialized()


def test_run_facts_say_where_each_seed_ran(exp):
    from seqtransfer.methods.common import run_facts

    out = exp.run({"a": (fake_fit, {"value": 1.0})})
    facts = run_facts(out)
    assert facts["a"]["ran_on"] == {"0": "local", "1": "local"}
    assert out[0].ran_on["executor"] == "local" and out[0].ran_on["pid"] == __import__("os").getpid()


def test_a_run_killed_mid_training_resumes_from_its_checkpoint(exp, monkeypatch):
    """The engine gives each run its own checkpoint folder: a run killed right after its second
    validation resumes there (it trains only the epochs it had left) and ends bit-identical to
    an uninterrupted run; the folder goes once the finished run is stored."""
    from seqtransfer import train as T
    from seqtransfer.methods import baseline
    cfg = exp.config(baseline.BaselineConfig, backbone="sasrec",
                     train=exp.train_config(epochs=5, max_steps=None, patience=10))
    whole = experiment.prepare(exp.dataset, exp.budget, seed=0, device="cpu", head_frac=0.25, min_user=1,
                               min_item=1, progress=False).run({"base": (baseline.fit, cfg)}, seeds=[0],
                                                               lr_grid=(3e-3,))[0]
    saved, real_save = [], T._save

    def killed_after_two(path, *args, **kw):
        real_save(path, *args, **kw)
        saved.append(path)
        if len(saved) == 2:
            raise KeyboardInterrupt("the kernel was killed")
    monkeypatch.setattr(T, "_save", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        exp.run({"base": (baseline.fit, cfg)}, seeds=[0], lr_grid=(3e-3,))
    ckpt = saved[0].parent
    assert ckpt.parent == exp.cache_dir / "checkpoints" and (ckpt / "last.pt").exists()
    monkeypatch.setattr(T, "_save", real_save)
    epochs = []
    monkeypatch.setattr(T, "_validate", lambda model, data, groups, c, epoch, f=T._validate:
                        (epochs.append(epoch), f(model, data, groups, c, epoch))[1])
    again = exp.run({"base": (baseline.fit, cfg)}, seeds=[0], lr_grid=(3e-3,))[0]
    assert epochs == [2, 3, 4]                                  # epochs 0 and 1 were not trained again
    assert again.train.history["epoch"].tolist() == [0, 1, 2, 3, 4]
    for a, b in zip(whole.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not ckpt.exists()


def given_fit(data, groups, cfg, seed=0, variant=None, features=None, base=None):
    """Records the data it saw and its constant; metric: the constant's sum plus base's."""
    CALLS.append((variant, seed, int(data.n_users), None if base is None else (base.variant, base.seed)))
    value = float(features.sum()) + (0 if base is None else base.metrics["value"].iloc[0])
    return MethodResult("fake", variant, seed, pd.DataFrame({"value": [value]}), pd.DataFrame(),
                        torch.nn.Linear(1, 1))


def test_run_entries_with_their_own_data_constants_and_fewer_seeds(exp):
    """A Run's data is what it alone sees; its constants are part of the cache key (a changed
    constant re-trains, the same one loads); a one-seed upstream run serves every seed."""
    from seqtransfer.data import eval_sample
    from seqtransfer.experiment import Run
    small = eval_sample(exp.data, 5, seed=0)                   # "source" tensors of 5 users
    feats = np.arange(4.0)

    def spec(f):
        return {"up": Run(given_fit, {"value": 0}, data=small, given={"features": f}, n_seeds=1),
                "arm": Run(given_fit, {"value": 0}, given={"features": f}, inputs={"base": "up"})}
    out = exp.run(spec(feats), lr_grid=(1e-3,))
    assert [(r.variant, r.seed) for r in out] == [("up", 0), ("arm", 0), ("arm", 1)]
    assert CALLS == [("up", 0, 5, None), ("arm", 0, exp.data.n_users, ("up", 0)),
                     ("arm", 1, exp.data.n_users, ("up", 0))]
    CALLS.clear()
    exp.run(spec(feats.copy()), lr_grid=(1e-3,))                # equal content: all from the cache
    assert CALLS == []
    again = exp.run(spec(feats + 1), lr_grid=(1e-3,))           # a changed constant: all re-trained
    assert len(CALLS) == 3 and again[1].metrics["value"].iloc[0] == 2 * (feats + 1).sum()
    with pytest.raises(ValueError, match="n_seeds must be >= 1"):
        Run(given_fit, {}, n_seeds=0)


def test_the_fitted_warm_up_is_two_of_this_datas_epochs(exp):
    from dataclasses import replace
    windows = len(exp.data.train_inputs)
    assert exp.steps_per_epoch == -(-windows // exp.budget.batch_size)
    big = replace(exp, budget=replace(exp.budget, warmup_steps=10 * windows + 7, batch_size=1))
    assert big.steps_per_epoch == windows                                # one window a step
    cfg = big.fitted_train_config(patience=3)
    # the budget's warm-up is longer than two epochs: cut to two, early stopping counted from there
    assert (cfg.warmup_steps, cfg.min_steps, cfg.patience) == (2 * windows, 2 * windows, 3)


def test_successive_halving_keeps_the_best_rung_and_continues_it_to_the_full_grids_run(toy_csv, tmp_path):
    """A grid of three under ``rung=1``: every rate trains one validation past its warm-up, the
    best on validation continues from its checkpoint, and that run equals, bit for bit, the
    full grid's run at the same rate; the other rates stopped at their rung; seed 1 trains the
    kept rate whole; a second call trains nothing."""
    from dataclasses import replace
    budget = get_budget("smoke", max_users=None, max_len=6, dim=8, n_seeds=2, epochs=6, max_steps=None,
                        patience=100, warmup_steps=4, batch_size=8)
    grid = (1e-3, 1e-2, 5e-2)
    made = {}
    for name, rung in (("grid", None), ("halving", 1)):
        exp = experiment.prepare(str(toy_csv), replace(budget, rung=rung), seed=0, device="cpu", head_frac=0.25,
                                 min_user=1, min_item=1, progress=False, cache=str(tmp_path / name))
        cfg = exp.config(baseline.BaselineConfig, backbone="sasrec", backbone_kwargs={"n_heads": 1, "n_layers": 1})
        made[name] = (exp, cfg, exp.run({"joint": (baseline.fit, cfg)}, lr_grid=grid))
    exp, cfg, (first, second) = made["halving"]
    assert exp.steps_per_epoch == 3                     # the peak rate from epoch 1 (step 6 >= 4) on
    t = first.tuning
    assert t["search"].tolist() == ["rung of 1"] * 3 and t["chosen"].sum() == 1
    # the choice is the best rung validation; the rungs trained two epochs (warm-up + one)
    assert first.lr == t.loc[t["valid_ndcg10"].idxmax(), "lr"]
    rungs = sorted((tmp_path / "halving").glob("joint_(rung_1)-0-*.pt"))
    assert len(rungs) == 3
    assert all(len(torch.load(p, weights_only=False).history) == 2 for p in rungs)
    # the kept rate continued from its rung checkpoint: its history's clock restarts there
    assert len(first.history) == 6 and (first.history["seconds"].diff() < 0).sum() == 1
    full = made["grid"][0].run({"joint": (baseline.fit, cfg)}, lr_grid=(first.lr,))[0]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, first.model.state_dict()[k]), k
    pd.testing.assert_frame_equal(full.metrics, first.metrics)
    assert second.lr == first.lr and second.tuning is first.tuning and len(second.history) == 6
    # no checkpoint is left; a second call loads every run
    assert not any((tmp_path / "halving" / "checkpoints").glob("*"))
    stamp = {p: p.stat().st_mtime for p in (tmp_path / "halving").glob("*.pt")}
    again = exp.run({"joint": (baseline.fit, cfg)}, lr_grid=grid)
    assert {p: p.stat().st_mtime for p in (tmp_path / "halving").glob("*.pt")} == stamp
    assert [r.lr for r in again] == [first.lr] * 2


def test_halving_with_keep_two_continues_the_two_best_rungs_and_chooses_on_their_whole_runs(toy_csv, tmp_path):
    """``keep=2``: every rate trains its rung, the two best rungs continue to early stopping,
    the better whole run is chosen (the others' rows are their rungs), each continued run is
    the full grid's run at that rate bit for bit, and seed 1 trains only the chosen rate."""
    from dataclasses import replace
    budget = get_budget("smoke", max_users=None, max_len=6, dim=8, n_seeds=2, epochs=6, max_steps=None,
                        patience=100, warmup_steps=4, batch_size=8)
    grid = (1e-3, 1e-2, 5e-2)
    made = {}
    for name, rung, keep in (("grid", None, 1), ("one", 1, 1), ("two", 1, 2)):
        exp = experiment.prepare(str(toy_csv), replace(budget, rung=rung, keep=keep), seed=0, device="cpu",
                                 head_frac=0.25, min_user=1, min_item=1, progress=False, cache=str(tmp_path / name))
        cfg = exp.config(baseline.BaselineConfig, backbone="sasrec", backbone_kwargs={"n_heads": 1, "n_layers": 1})
        made[name] = exp.run({"joint": (baseline.fit, cfg)}, lr_grid=grid)
    rungs = [torch.load(p, weights_only=False) for p in sorted((tmp_path / "two").glob("joint_(rung_1)-0-*.pt"))]
    for r in rungs:                                   # a rung's rate: the grid value its schedule peaks at
        r.lr = min(grid, key=lambda lr: abs(lr - float(r.history["lr"].max())))
    assert sorted(r.lr for r in rungs) == list(grid)
    order = sorted(rungs, key=lambda r: -r.ndcg10("all", "valid"))
    kept = sorted(r.lr for r in order[:2])
    first, second = made["two"]
    t = first.tuning
    assert t["search"].tolist() == ["rung of 1, best 2 continued"] * 3
    assert sorted(t.loc[t["continued"], "lr"]) == kept and t["chosen"].sum() == 1
    # two whole runs of seed 0 (the kept rates), the chosen one the better on validation
    whole = [torch.load(p, weights_only=False) for p in (tmp_path / "two").glob("joint-0-*.pt")]
    assert len(whole) == 2
    grid_exp = experiment.prepare(str(toy_csv), budget, seed=0, device="cpu", head_frac=0.25, min_user=1,
                                  min_item=1, progress=False, cache=str(tmp_path / "grid"))
    full = {lr: grid_exp.run({"joint": (baseline.fit, cfg)}, lr_grid=(lr,))[0] for lr in kept}
    best = max(kept, key=lambda lr: full[lr].ndcg10("all", "valid"))
    assert first.lr == best and second.lr == best and len(made["two"]) == 2
    for k, v in full[best].model.state_dict().items():
        assert torch.equal(v, first.model.state_dict()[k]), k
    # the dropped rate's row is its rung's validation; the kept rows are the whole runs'
    for lr in kept:
        assert t.loc[t["lr"] == lr, "valid_ndcg10"].item() == pytest.approx(full[lr].ndcg10("all", "valid"))
    dropped = [r for r in rungs if r.lr not in kept]
    assert t.loc[~t["continued"], "valid_ndcg10"].item() == pytest.approx(dropped[0].ndcg10("all", "valid"))
    # keep=1 continues only the best rung: one whole run of seed 0
    assert len(list((tmp_path / "one").glob("joint-0-*.pt"))) == 1
    assert made["one"][0].lr == order[0].lr
    assert not any((tmp_path / "two" / "checkpoints").glob("*"))


def test_halving_leaves_runs_that_restart_to_the_whole_grid():
    from seqtransfer.methods import intervened
    from seqtransfer.methods.ecat.config import EcatConfig
    from seqtransfer.runspec import Run
    grid = (1e-3, 3e-3)
    assert experiment.halves(Run(baseline.fit, baseline.BaselineConfig()), grid, 1)
    assert not experiment.halves(Run(baseline.fit, baseline.BaselineConfig()), grid, None)
    assert not experiment.halves(Run(intervened.fit, intervened.IntervenedConfig()), grid, 1)
    assert experiment.halves(Run(intervened.fit, intervened.IntervenedConfig(use_plugins=False)), grid, 1)
    assert experiment.halves(Run(baseline.fit, EcatConfig(n_periods=3)), grid, 1)      # a rung in its first period
    assert experiment.halves(Run(baseline.fit, EcatConfig(n_periods=1)), grid, 1)


def test_continuing_ranks_rungs_by_validation():
    class R:
        def __init__(self, v):
            self.v = v

        def ndcg10(self, group, split):
            return self.v
    rs = [R(0.2), R(0.5), R(float("nan")), R(0.4)]
    assert experiment.continuing(rs, 2) == [1, 3]
    assert experiment.continuing(rs, 1) == [1]
    assert experiment.continuing(rs, 4) == [0, 1, 2, 3]
    assert experiment.continuing([R(0.3), R(0.3)], 1) == [0]
