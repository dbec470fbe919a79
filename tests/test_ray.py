"""The Ray executor of Experiment.run (seqtransfer.executor).

Against a local Ray (2 CPUs, 127.0.0.1 only, started and shut down by this module): the same
results as the local executor for the same seeds, the learning-rate choice and the order of
runs that build on others, parallel independent runs, the cache kept by the driver, a failing
run, and a worker killed mid-run. Then notebook 01 at the smoke budget under a local Ray
(same metrics as local) and on a two-node cluster on 127.0.0.1 started with ``ray start``
(runs on both nodes), whose processes the test stops by process group.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from dataclasses import dataclass, field

import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")

from seqtransfer import executor, experiment, report  # noqa: E402
from seqtransfer.budget import get_budget  # noqa: E402
from seqtransfer.methods import baseline, intervened  # noqa: E402
from seqtransfer.methods.common import MethodResult  # noqa: E402
from seqtransfer.train import TrainConfig  # noqa: E402

pytestmark = pytest.mark.ray
# the fits below travel to Ray workers by value: the workers have no tests/ on their path
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs on 127.0.0.1, through the library's own connect."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    info = executor.connect(executor.RayOptions(local_cpus=2))
    yield info
    ray.shutdown()


@pytest.fixture
def one_thread():
    """Local and Ray runs train with one torch thread each, so their sums run in one order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _exp(toy_csv, tmp_path, executor_name, cache=True, n_seeds=2, **budget_settings):
    budget = get_budget("smoke", max_users=None, max_len=6, dim=8, n_seeds=n_seeds, **budget_settings)
    exp = experiment.prepare(str(toy_csv), budget, seed=0, device="cpu", head_frac=0.25, min_user=1,
                             min_item=1, progress=False,
                             cache=str(tmp_path / f"runs-{executor_name}") if cache else False)
    exp.executor = executor_name          # the cluster is the module's local Ray
    return exp


def _log(path: str, **fields) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "t": time.time(), **fields}) + "\n")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def logged_fit(data, groups, cfg, seed=0, variant=None, stage1=None):
    """Logs start and end; validation NDCG@10 peaks at lr 3e-3 for "a" and 6e-3 for "b";
    a run on ``stage1`` adds that run's value."""
    _log(cfg.log, event="start", variant=variant, seed=seed, lr=cfg.train.lr)
    time.sleep(cfg.sleep)
    lr = cfg.train.lr
    valid = 0.2 - abs(lr - 3e-3) * 10 + (0.04 if variant == "b" and lr == 6e-3 else 0)
    if stage1 is not None:
        valid += stage1.metrics["value"].iloc[0]
    metrics = pd.DataFrame({"split": ["valid", "test"], "group": "all", "metric": "ndcg", "k": 10,
                            "value": [valid, 1.0 - valid]})
    _log(cfg.log, event="end", variant=variant, seed=seed, lr=lr)
    return MethodResult("fake", variant, seed, metrics, pd.DataFrame(), torch.nn.Linear(1, 1))


@dataclass
class _Cfg:
    """A method config for the fits above: a log file, a sleep, train settings (its repr is
    part of the cache key) and, for a real fit, that fit's config."""

    log: str
    sleep: float = 0.0
    train: TrainConfig = field(default_factory=TrainConfig)
    base: object = None


@pytest.mark.parametrize("rung,keep", [(None, 1), (1, 1), (1, 2)], ids=["grid", "halving", "halving-keep-2"])
def test_real_runs_on_ray_equal_local_runs(local_ray, toy_csv, tmp_path, one_thread, rung, keep):
    """SASRec and plugins on its trained model (a run on an earlier run), 2 seeds: every
    metric, the chosen rate and the ranks are the same under both executors, with the whole
    grid and with successive halving (every rate one validation past its warm-up, the best one
    or two continued from their checkpoints)."""
    kw = dict(backbone="sasrec", backbone_kwargs={"n_heads": 1, "n_layers": 1})
    schedule = {} if rung is None else {"rung": rung, "keep": keep, "epochs": 4, "max_steps": None}
    out = {}
    for name in ("local", "ray"):
        exp = _exp(toy_csv, tmp_path, name, **schedule)
        runs = {"joint": (baseline.fit, exp.config(baseline.BaselineConfig, **kw)),
                "plugins": (intervened.fit, exp.config(intervened.IntervenedConfig, use_aggregation=False, **kw),
                            {"stage1": "joint"})}
        out[name] = exp.run(runs, lr_grid=(1e-3, 3e-3, 6e-3))
    assert [(r.variant, r.seed, r.lr) for r in out["ray"]] == [(r.variant, r.seed, r.lr) for r in out["local"]]
    for a, b in zip(out["local"], out["ray"]):
        pd.testing.assert_frame_equal(a.metrics, b.metrics)
        assert (a.ranks["test"] == b.ranks["test"]).all()
        # the grid's wall-clock seconds differ between any two runs; everything else is equal
        pd.testing.assert_frame_equal(a.tuning.drop(columns="seconds"), b.tuning.drop(columns="seconds"))
    assert {r.ran_on["executor"] for r in out["ray"]} == {"ray"}
    assert {r.ran_on["node"] for r in out["local"]} == {"local"}
    if rung is not None:
        assert set(out["ray"][0].tuning["search"]) == {"rung of 1" + (", best 2 continued" if keep == 2 else "")}
        assert out["ray"][0].tuning["continued"].sum() == keep
        assert len(out["ray"][0].history) == 4 and not any((tmp_path / "runs-ray" / "checkpoints").glob("*"))


def test_rate_choice_order_and_parallel_runs(local_ray, toy_csv, tmp_path):
    """A grid of 3 on the first seed, the chosen rate on the second, "b" built on "a": the same
    choices as locally; "b" of a seed starts only after "a" of that seed ended; independent
    runs overlap in time (2 CPUs)."""
    log = tmp_path / "log.jsonl"
    runs = {"a": (logged_fit, _Cfg(str(log), sleep=1.5)),
            "b": (logged_fit, _Cfg(str(log), sleep=1.5), {"stage1": "a"})}
    grid = (1.5e-3, 3e-3, 6e-3)
    local = _exp(toy_csv, tmp_path, "local", cache=False).run(runs, lr_grid=grid)
    log.unlink()
    remote = _exp(toy_csv, tmp_path, "ray", cache=False).run(runs, lr_grid=grid)
    assert [(r.variant, r.seed, r.lr) for r in remote] == [(r.variant, r.seed, r.lr) for r in local] == [
        ("a", 0, 3e-3), ("a", 1, 3e-3), ("b", 0, 6e-3), ("b", 1, 6e-3)]
    assert [r.metrics["value"].tolist() for r in remote] == [r.metrics["value"].tolist() for r in local]
    events = _read(log)
    assert len([e for e in events if e["event"] == "start"]) == 3 + 1 + 3 + 1
    end_a = {s: max(e["t"] for e in events if e["event"] == "end" and e["variant"] == "a"
                    and e["seed"] == s and (s == 1 or e["lr"] == 3e-3)) for s in (0, 1)}
    for e in events:
        if e["event"] == "start" and e["variant"] == "b":
            assert e["t"] >= end_a[e["seed"]], "a run started before the run it builds on ended"
    spans = {}
    for e in events:
        spans.setdefault((e["variant"], e["seed"], e["lr"]), {})[e["event"]] = e["t"]
    intervals = sorted((s["start"], s["end"]) for s in spans.values())
    assert any(b0 < a1 for (a0, a1), (b0, b1) in zip(intervals, intervals[1:])), "no two runs overlapped"


def test_cache_stays_with_the_driver_and_a_failing_run_keeps_the_finished_ones(local_ray, toy_csv, tmp_path):
    log = tmp_path / "log.jsonl"

    def failing_fit(data, groups, cfg, seed=0, variant=None):
        deadline = time.time() + 60               # fail once "a" has finished (no race)
        while time.time() < deadline and not any(e["event"] == "end" for e in _read(Path(cfg.log))):
            time.sleep(0.2)
        time.sleep(0.5)
        raise ValueError("the loss went NaN")

    exp = _exp(toy_csv, tmp_path, "ray", n_seeds=1)
    with pytest.raises(RuntimeError, match=r"run 'bad' \(seed 0, lr None\) failed in its training on Ray: "
                                           r"ValueError\('the loss went NaN'\)"):
        exp.run({"a": (logged_fit, _Cfg(str(log), sleep=0.1)), "bad": (failing_fit, _Cfg(str(log)))},
                lr_grid=(3e-3,))
    assert len(list(exp.cache_dir.glob("a-0-*.pt"))) == 1            # the finished run is kept
    before = len(_read(log))
    again = exp.run({"a": (logged_fit, _Cfg(str(log), sleep=0.1))}, lr_grid=(3e-3,))
    assert len(_read(log)) == before and again[0].metrics["value"].iloc[0] == pytest.approx(0.2)


def killed_once_fit(data, groups, cfg, seed=0, variant=None):
    """The first attempt writes its pid and waits to be killed; a retry trains normally."""
    marker = Path(cfg.log).with_suffix(".first")
    _log(cfg.log, event="start", variant=variant, seed=seed, lr=cfg.train.lr)
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(120)
    return baseline.fit(data, groups, cfg.base, seed=seed, variant=variant)


def test_a_worker_killed_mid_run_is_retried_with_the_same_result(local_ray, toy_csv, tmp_path, one_thread):
    log = tmp_path / "log.jsonl"
    exp = _exp(toy_csv, tmp_path, "ray", cache=False, n_seeds=1)
    cfg = _Cfg(str(log), base=exp.config(baseline.BaselineConfig, backbone="sasrec",
                                         backbone_kwargs={"n_heads": 1, "n_layers": 1}))
    expected = baseline.fit(exp.data, exp.groups, cfg.base, seed=0, variant="a")
    box = {}
    thread = threading.Thread(target=lambda: box.update(out=exp.run({"a": (killed_once_fit, cfg)},
                                                                    lr_grid=(3e-3,))))
    thread.start()
    marker = log.with_suffix(".first")
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.2)
    pid = int(marker.read_text())
    os.kill(pid, signal.SIGKILL)                                     # the worker dies mid-run
    thread.join(timeout=300)
    assert not thread.is_alive() and "out" in box
    (result,) = box["out"]
    starts = [e["pid"] for e in _read(log) if e["event"] == "start"]
    assert len(starts) == 2 and starts[0] == pid and starts[1] != pid   # retried in another worker
    pd.testing.assert_frame_equal(result.metrics, expected.metrics)


def test_a_sweep_through_map_calls_equals_the_local_sweep(local_ray, toy_csv, tmp_path, one_thread):
    """03's sensitivity sweep (a full two-stage fit and a plugins-only point) on Ray: the same
    table as in this process; a call that raises names its position."""
    from seqtransfer.train import TrainConfig as TC
    out = {}
    for name in ("local", "ray"):
        exp = _exp(toy_csv, tmp_path, name, cache=False, n_seeds=1)
        kw = dict(backbone="sasrec", backbone_kwargs={"n_heads": 1, "n_layers": 1, "dim": 8}, n_strata=2,
                  plugin_kind="linear", train=TC(epochs=1, batch_size=8, eval_every=1, device="cpu", progress=False))
        cfg = intervened.IntervenedConfig(**kw)
        base = intervened.fit(exp.data, exp.groups, intervened.IntervenedConfig(
            use_aggregation=False, use_plugins=False, **kw), seed=0)
        ref = intervened.fit(exp.data, exp.groups, cfg, seed=0)
        out[name] = intervened.sensitivity(exp.data, exp.groups, cfg, base, n_strata_grid=[2, 3],
                                           head_frac_grid=[0.5], seed=0, reference=ref,
                                           run_calls=exp.map_calls)
    assert set(out["ray"]["trained"]) == {"reused", "both stages", "plugins"}
    pd.testing.assert_frame_equal(out["ray"], out["local"])

    def boom(x):
        raise KeyError(x)
    with pytest.raises(RuntimeError, match=r"call 2 of 2 \(boom\) failed in its training on Ray: KeyError\('b'\)"):
        exp.map_calls([(len, ("a",)), (boom, ("b",))])


def test_ant_runs_on_ray_equal_local_runs(local_ray, toy_csv, tmp_path, one_thread):
    """04's runs: a pre-training on its own (source) tensors with its own one-value grid and
    one seed, constant features, variants built on it over two seeds and a two-point grid. Ray
    and local give the same chosen rates, metrics and weights, and every run ran on Ray."""
    from test_ant import _transfer

    from seqtransfer.methods import ant
    results = {}
    for name in ("local", "ray"):
        prep, cfg = _transfer(toy_csv, tmp_path / name)
        prep.target.executor = name
        results[name] = prep.target.run(ant.runs(prep, cfg, variants=("scratch", "re-learn"), label="a"))
    local, remote = results["local"], results["ray"]
    assert [(r.variant, r.seed, r.lr) for r in remote] == [(r.variant, r.seed, r.lr) for r in local]
    assert len(remote) == 5 and remote[0].variant.startswith("ANT pre-train")
    for a, b in zip(local, remote):
        pd.testing.assert_frame_equal(a.metrics, b.metrics)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
            assert torch.equal(x.cpu(), y.cpu())
    assert {r.ran_on["executor"] for r in remote} == {"ray"}


# --- notebook 01 at the smoke budget --------------------------------------------------------

def _runs(payload: dict) -> dict:
    return payload["extra"]["runs"]


def _metrics(rows: pd.DataFrame) -> pd.DataFrame:
    keep = ["method", "group", "metric", "k", "split", "seed", "value"]
    keep = [c for c in keep if c in rows.columns]
    return rows[keep].sort_values(keep[:-1]).reset_index(drop=True)


@pytest.mark.notebook
def test_notebook_01_on_a_local_ray_records_the_local_metrics(smoke_notebook, monkeypatch):
    if ray.is_initialized():
        ray.shutdown()                    # the kernel starts its own; this process needs none
    monkeypatch.setenv("OMP_NUM_THREADS", "1")          # kernels and workers: one thread each
    local_nb, local = smoke_notebook("01_backbones", executor="local")
    (lp,) = report.read_payloads(local_nb)             # read now: the next run writes the same file
    ray_nb, remote = smoke_notebook("01_backbones", executor="ray")
    (rp,) = report.read_payloads(ray_nb)
    pd.testing.assert_frame_equal(_metrics(remote), _metrics(local))
    assert {n for v in _runs(lp).values() for n in v["ran_on"].values()} == {"local"}
    assert "local" not in {n for v in _runs(rp).values() for n in v["ran_on"].values()}
    assert "runs done" in ray_nb.read_text()                          # the progress line


# the transfer notebooks, each cut to a few runs: its upstream models (pre-trainings, teachers)
# and the arms built on them; (name, parameters, how many upstream runs, how to spot one)
TRANSFER_ON_RAY = [
    ("04_ant", dict(target_genres=["Film-Noir"], sanity_target="", ablation=False), None, "pre-train"),
    ("05_metarec", dict(targets=["ml-100k"], arms=["target only", "pre-train + fine-tune, no VQ", "MetaRec"]),
     2, "MetaRec pre-train"),                                   # with and without VQ
    ("06_ecat", dict(bridge_target="", ablations=False), 3, "| teacher "),   # a chain of three periods
]


@pytest.mark.notebook
@pytest.mark.parametrize("name,small,n_upstream,upstream", TRANSFER_ON_RAY, ids=[t[0] for t in TRANSFER_ON_RAY])
def test_transfer_notebook_on_a_local_ray_records_the_local_metrics(smoke_notebook, monkeypatch, amazon_scientific,
                                                                     name, small, n_upstream, upstream):
    """04-06 through the engine: their upstream models and the arms built on them as Ray tasks
    give the metrics the local executor gives, and every run, upstream ones too, ran on Ray."""
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    local_nb, local = smoke_notebook(name, executor="local", cache_runs=False, **small)
    (lp,) = report.read_payloads(local_nb)
    ray_nb, remote = smoke_notebook(name, executor="ray", cache_runs=False, **small)
    (rp,) = report.read_payloads(ray_nb)
    assert len(local) and set(local["method"]) == set(remote["method"])
    if "arms" in small:
        assert set(local["method"]) == {f"metarec:ml-100k | {a}" for a in small["arms"]}
    pd.testing.assert_frame_equal(_metrics(remote), _metrics(local))
    assert {n for v in _runs(lp).values() for n in v["ran_on"].values()} == {"local"}
    assert "local" not in {n for v in _runs(rp).values() for n in v["ran_on"].values()}
    ran = sum(upstream in run for run in _runs(rp))
    assert ran == n_upstream if n_upstream else ran > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_node(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    """``ray start ... --block`` in its own process group, on 127.0.0.1 only."""
    cmd = [sys.executable, str(ROOT / "tests" / "ray_loopback.py"), "start", "--block",
           "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats", *args]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _wait_nodes(address: str, n: int, env: dict, timeout: float = 120) -> list[str]:
    code = ("import ray, json; ray.init(address=%r, log_to_driver=False); "
            "print(json.dumps([x['NodeID'] for x in ray.nodes() if x['Alive']]))" % address)
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                             timeout=120)
        if out.returncode == 0:
            nodes = json.loads(out.stdout.strip().splitlines()[-1])
            if len(nodes) >= n:
                return nodes
        time.sleep(3)
    raise AssertionError(f"the cluster at {address} did not reach {n} nodes")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a node: SIGTERM to its process group (``ray start --block`` and every process it
    started), SIGKILL what is left after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    time.sleep(2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)                  # stragglers of the group, if any
    except ProcessLookupError:
        pass


@pytest.mark.notebook
def test_notebook_01_on_a_two_node_cluster(smoke_notebook, tmp_path, monkeypatch):
    """A head and a second node on 127.0.0.1 with one CPU each; notebook 01 with both backbones
    (four independent runs) joins it and its runs land on both nodes."""
    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    node_env = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")     # Ray's socket paths must stay short
    head = _start_node(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"],
                       tmp_path / "head.log", node_env)
    nodes = []
    try:
        _wait_nodes(address, 1, env)
        worker = _start_node([f"--address={address}"], tmp_path / "worker.log", node_env)
        nodes = [head, worker]
        cluster = set(_wait_nodes(address, 2, env))
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        nb, rows = smoke_notebook("01_backbones", executor="ray", ray_address=address,
                                  backbones=["sasrec", "gru4rec"])
        (payload,) = report.read_payloads(nb)
        ran_on = {v: facts["ran_on"]["0"] for v, facts in _runs(payload).items()}
        print("runs and the node each ran on:", json.dumps(ran_on, indent=1))
        assert len(ran_on) == 4 and set(ran_on.values()) == cluster        # both nodes worked
        assert {"ndcg", "hr"} <= set(rows["metric"]) and rows["value"].notna().all()
    finally:
        for proc in reversed(nodes or [head]):
            _stop(proc)
    for proc in nodes or [head]:
        assert proc.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)                            # no process of the group is left
    shutil.rmtree(temp, ignore_errors=True)
