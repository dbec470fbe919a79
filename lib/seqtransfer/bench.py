"""Benchmark: time to accuracy of the training recipe on a real dataset (ML-1M by default).

For each backbone it trains one model on all users, full-ranking validation after every epoch,
and prints: the wall-clock time to reach validation NDCG@10 of 0.10, 0.15 and 0.17; the median
epoch time; training positions per second; the full-ranking evaluation time of all users; the
peak resident memory of the process; the final validation and test NDCG@10 and HR@10; and why
training stopped (early stopping, or a cap).

``--compare`` trains the old recipe (windows of 200, batch 128, lr 1e-3 without warm-up, full
softmax, 4 epochs: the former ``quick`` budget) and the new default one after the other in one
invocation, and prints every figure for both with their ratio. ``--levers`` times single
optimisation steps (CPU time of this process, so a busy machine disturbs it little) for each
speed lever: window length, batch size, output layer, threads, fused optimiser, bf16,
``torch.compile``. ``--batch DIR`` prints where an executed batch spent its time, per notebook
and per section, and with ``--runs CACHE`` per arm (:mod:`seqtransfer.timing`). ``--halving
DIR`` reads a run cache and prints, per arm, the learning rate successive halving would keep
against the full grid's, and the seconds of each search (:mod:`seqtransfer.halving`).
``--patience DIR`` reads a run cache and prints what a shorter early-stopping patience would
save and lose (:mod:`seqtransfer.stopping`).
``--ecat-student step,period`` times 06's ECAT student with the teacher run in every step and
with its outputs computed once per period, side by side.

Wall-clock figures assume an otherwise idle machine; the process CPU seconds printed beside the
time-to-accuracy figures are steadier when other work shares the cores (divide by the threads
for a rough idle wall-clock figure). Epoch time alone says little across recipes (a shorter window makes more, cheaper steps):
compare the time to a validation accuracy. Targets live here, printed, not in timed tests.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from . import data
from .budget import get_budget
from .evaluate import evaluate
from .methods import baseline
from .train import TrainConfig, resolve_device

LEVELS = (0.10, 0.15, 0.17)


@dataclass(frozen=True)
class Recipe:
    """How one model is trained: the settings a time-to-accuracy comparison varies."""

    name: str
    max_len: int            # training window / evaluation history length
    batch_size: int         # windows per step
    lr: float               # peak learning rate
    warmup_steps: int       # linear warm-up steps
    loss_type: str          # "ce" | "sampled" | "bce"
    n_negatives: int        # shared negatives per batch ("sampled")
    epochs: int             # epoch cap
    patience: int           # evaluations without improvement before stopping
    max_minutes: float | None = None   # wall-clock cap per model


def new_recipe(max_minutes: float | None = None) -> Recipe:
    """The default recipe: the ``quick`` budget's training settings on all users."""
    b = get_budget("quick")
    return Recipe("new", b.max_len, b.batch_size, b.lr, b.warmup_steps, b.loss_type, b.n_negatives,
                  epochs=200, patience=b.patience, max_minutes=max_minutes)


OLD_RECIPE = Recipe("old", max_len=200, batch_size=128, lr=1e-3, warmup_steps=0, loss_type="ce",
                    n_negatives=1, epochs=4, patience=2)


def time_to_levels(history, floor: float, fractions: tuple[float, ...] = (0.9, 0.98)) -> list[float]:
    """Seconds of training until validation NDCG@10 first reached each fraction of ``floor``
    (NaN where never): recipes compared at levels every one of them reaches."""
    return [history.loc[history["valid_ndcg10"] >= f * floor, "seconds"].min() for f in fractions]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_and_measure(split: data.Split, groups: data.UserGroups, recipe: Recipe, backbone: str,
                      dim: int, device: torch.device, seed: int) -> dict:
    """Train one model under ``recipe`` and return the benchmark's figures."""
    seqs = data.build_sequences(split, recipe.max_len)
    cfg = baseline.BaselineConfig(
        backbone=backbone,
        backbone_kwargs={"dim": dim, "loss_type": recipe.loss_type, "n_negatives": recipe.n_negatives},
        train=TrainConfig(epochs=recipe.epochs, patience=recipe.patience, batch_size=recipe.batch_size,
                          lr=recipe.lr, warmup_steps=recipe.warmup_steps, device=str(device),
                          max_minutes=recipe.max_minutes, progress=False))
    res = baseline.fit(seqs, groups, cfg, seed=seed)
    h = res.history
    t = time.perf_counter()
    evaluate(res.model, seqs.to(device), "test", {"all": groups["all"]})
    eval_s = time.perf_counter() - t
    epoch_s = float(h["seconds"].diff().fillna(h["seconds"]).median())
    out = {"recipe": recipe.name, "backbone": backbone, "epochs": len(h),
           "best_epoch": res.train.best_epoch + 1, "stopped": res.train.stopped,
           "early_stopped": res.train.early_stopped, "epoch_s": epoch_s,
           "positions_per_s": seqs.n_train_positions / epoch_s, "eval_s": eval_s,
           "train_s": res.train.seconds, "peak_rss_mb": peak_rss_mb(),
           "valid_ndcg10": res.ndcg10("all", "valid"), "test_ndcg10": res.ndcg10("all", "test"),
           "test_hr10": _metric(res, "hr"), "history": h}
    for level in LEVELS:
        hit = h[h["valid_ndcg10"] >= level] if "valid_ndcg10" in h else h.iloc[:0]
        out[f"to_{level:.2f}"] = float(hit["seconds"].iloc[0]) if len(hit) else float("nan")
        out[f"cpu_to_{level:.2f}"] = float(hit["cpu_seconds"].iloc[0]) if len(hit) else float("nan")
    return out


def _metric(res, metric: str) -> float:
    m = res.metrics
    sel = (m["split"] == "test") & (m["group"] == "all") & (m["metric"] == metric) & (m["k"] == 10)
    return float(m.loc[sel, "value"].iloc[0])


_ROWS = [("valid NDCG@10 >= 0.10 (s)", "to_0.10", "{:.0f}"), ("valid NDCG@10 >= 0.15 (s)", "to_0.15", "{:.0f}"),
         ("valid NDCG@10 >= 0.17 (s)", "to_0.17", "{:.0f}"),
         ("  the same in process CPU s: 0.10", "cpu_to_0.10", "{:.0f}"), ("  0.15", "cpu_to_0.15", "{:.0f}"),
         ("  0.17", "cpu_to_0.17", "{:.0f}"), ("epoch time, median (s)", "epoch_s", "{:.1f}"),
         ("training positions/s", "positions_per_s", "{:,.0f}"),
         ("full-ranking eval, all users (s)", "eval_s", "{:.2f}"), ("training time (s)", "train_s", "{:.0f}"),
         ("peak RSS of the process (MB)", "peak_rss_mb", "{:.0f}"), ("epochs run", "epochs", "{}"),
         ("best epoch", "best_epoch", "{}"), ("valid NDCG@10", "valid_ndcg10", "{:.4f}"),
         ("test  NDCG@10", "test_ndcg10", "{:.4f}"), ("test  HR@10", "test_hr10", "{:.4f}")]


def _fmt(fmt: str, v) -> str:
    if isinstance(v, float) and np.isnan(v):
        return "not reached"
    return fmt.format(v)


def print_table(results: list[dict]) -> None:
    """One column per run; with exactly two runs of one backbone, a ratio column (b / a)."""
    heads = [f"{r['backbone']} {r['recipe']}" for r in results]
    print(f"{'':34s}" + "".join(f"{h:>16s}" for h in heads) + (f"{'ratio':>10s}" if len(results) == 2 else ""))
    for label, key, fmt in _ROWS:
        vals = [r[key] for r in results]
        line = f"{label:34s}" + "".join(f"{_fmt(fmt, v):>16s}" for v in vals)
        if len(results) == 2:
            a, b = vals
            ok = all(isinstance(v, (int, float)) and np.isfinite(v) for v in (a, b)) and a
            line += f"{(b / a if ok else float('nan')):>10.2f}" if ok else f"{'-':>10s}"
        print(line)
    for h, r in zip(heads, results):
        print(f"stopped ({h}): {r['stopped']}")


def levers(split: data.Split, dim: int, steps: int = 10, seed: int = 0, compile: bool = True) -> list[dict]:
    """Milliseconds per optimisation step for each speed lever: wall clock, and CPU time of this
    process (all its threads; steadier than wall clock when the machine is busy)."""
    cases = [("windows 200, CE (old)", dict(max_len=200)), ("windows 50, CE (default)", {}),
             ("windows 50, batch 256", dict(batch=256)),
             ("sampled softmax, 512 shared negatives", dict(loss_type="sampled", n_negatives=512)),
             ("sampled softmax, 1024 shared negatives", dict(loss_type="sampled", n_negatives=1024)),
             ("fused AdamW", dict(fused=True)), ("bf16 autocast on CPU", dict(bf16=True)),
             ("1 thread", dict(threads=1))] + ([("torch.compile", dict(compile=True))] if compile else [])
    out = []
    for name, kw in cases:
        out.append({"lever": name, **_time_steps(split, dim, steps, seed, **kw)})
        r = out[-1]
        print(f"{name:40s} {r['wall_ms']:8.1f} wall ms/step {r['cpu_ms']:8.1f} CPU ms/step "
              f"{r['cpu_ms_per_128']:8.1f} CPU ms/128 windows  (first two steps {r['warmup_s']:.1f} s)", flush=True)
    return out


def _time_steps(split, dim, steps, seed, max_len=50, batch=128, loss_type="ce", n_negatives=1,
                fused=False, bf16=False, threads=None, compile=False) -> dict:
    from .models import make_backbone
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        seqs = data.build_sequences(split, max_len)
        torch.manual_seed(seed)
        m = make_backbone("sasrec", seqs.n_items, dim=dim, max_len=max_len, loss_type=loss_type,
                          n_negatives=n_negatives)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
        loss_fn = torch.compile(m.loss) if compile else m.loss
        order = torch.randperm(len(seqs.train_inputs), generator=torch.Generator().manual_seed(seed))

        def step(i):
            b = order[(i * batch) % len(order):][:batch]
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(seqs.train_inputs[b], seqs.train_targets[b])
            loss.backward()
            opt.step()

        t = time.perf_counter()
        step(0), step(1)
        warm = time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time()
        for i in range(2, 2 + steps):
            step(i)
        wall, cpu = (time.perf_counter() - t) / steps * 1000, (time.process_time() - c) / steps * 1000
    finally:
        torch.set_num_threads(old_threads)
    return {"wall_ms": wall, "cpu_ms": cpu, "cpu_ms_per_128": cpu * 128 / batch, "warmup_s": warm}


def metarec_pretrain(lrs: tuple[float, ...], n_sources: int = 4, target: str = "ml-100k", seed: int = 0,
                     max_minutes: float = 30.0, source_eval_users: int | None = 1000,
                     device: str = "auto", progress: bool = True) -> list[dict]:
    """Time to accuracy of 05's joint pre-training (the multi-domain VQ model on the ``n_sources``
    largest ML-1M genre domains, the quick budget's schedule) at each learning rate in ``lrs``,
    one after another in this process: epochs, steps, seconds, why it stopped, the best pooled
    source validation NDCG@10, and the seconds to reach 90% and 98% of the lowest best among the
    rates (a level every rate reaches, so the times compare)."""
    from . import experiment
    from .methods import metarec
    from .models import MultiDomainConfig, VQConfig
    source = data.load("ml-1m")
    domains = metarec.largest_domains(source, n_sources)
    setting = data.dataset_setting(source, data.load(target), sources=domains)
    prep = experiment.prepare_domains(setting, "quick", seed, device, progress=False, source_eval_users=source_eval_users)
    b = prep.target.budget
    windows = sum(len(s.train_inputs) for s in prep.sources.values())
    print(f"sources {', '.join(prep.sources)}: {windows} training windows, "
          f"{sum(s.n_users for s in prep.sources.values())} validation sequences", flush=True)
    out = []
    for lr in lrs:
        cfg = metarec.MetaRecConfig(model=MultiDomainConfig(dim=b.dim, max_len=b.max_len, vq=VQConfig(n_codes=256)),
                                    pretrain=prep.target.train_config(lr=lr, max_minutes=max_minutes, progress=progress))
        t0, c0 = time.perf_counter(), time.process_time()
        r = metarec.pretrain(prep.sources[next(iter(prep.sources))], None, cfg, seed, sources=prep.sources)
        h = r.history
        out.append({"lr": lr, "epochs": len(h), "steps": r.train.steps, "seconds": time.perf_counter() - t0,
                    "cpu_seconds": time.process_time() - c0, "stopped": r.train.stopped,
                    "best_valid": float(h["valid_ndcg10"].max()), "test": r.ndcg10("all", "test"), "history": h})
        print(f"  lr {lr:g}: {out[-1]['epochs']} epochs, {out[-1]['steps']} steps, {out[-1]['seconds']:.0f} s, "
              f"best valid NDCG@10 {out[-1]['best_valid']:.4f}, {r.train.stopped}", flush=True)
    floor = min(o["best_valid"] for o in out)
    print(f"\nMetaRec joint pre-training (VQ), time to pooled source validation NDCG@10 "
          f"(levels: 90% and 98% of the lowest best, {floor:.4f})")
    print(f"{'lr':>8} {'to 90%':>8} {'to 98%':>8} {'best':>8} {'test':>8} {'epochs':>7} {'seconds':>8}  stopped")
    for o in out:
        reach = o["to_90"], o["to_98"] = time_to_levels(o["history"], floor)
        print(f"{o['lr']:>8g} {reach[0]:>8.0f} {reach[1]:>8.0f} {o['best_valid']:>8.4f} {o['test']:>8.4f} "
              f"{o['epochs']:>7} {o['seconds']:>8.0f}  {o['stopped']}")
    return out


def entire_space(losses: tuple[str, ...], n_negatives: int = 512, seed: int = 0, target: str = "Film-Noir",
                 entire_users: int | None = 2000, max_minutes: float | None = 30.0, device: str = "auto") -> list[dict]:
    """Time to accuracy of 06's entire-space model (ECAT's last teacher period: a SASRec on the
    whole entire space of the quick budget, ``target`` plus a sample of ``entire_users`` ML-1M
    users; the students and the ``joint`` baseline score every item in their own step, so the
    training loss reaches the teachers only) under each output loss in ``losses`` ("ce" full softmax,
    "sampled" with ``n_negatives`` shared negatives), one after another in this process, at the
    quick budget's schedule (lr 3e-3, warm-up 100, patience 5). Validation and test always rank
    every item (full ranking), whatever the training loss. Prints the seconds to 90% and 98% of
    the lowest best validation NDCG@10 among the losses, the best, test NDCG@10, epochs and why
    each stopped."""
    from . import entire
    setting = entire.genre_space(data.load("ml-1m"), target, "quick", seed, entire_users=entire_users,
                                 device=device, progress=False)
    groups = data.activeness_groups(setting.split.activeness)
    b = get_budget("quick")
    print(f"entire space {setting.name}: {setting.split.n_users} users, {setting.split.n_items} items", flush=True)
    out = []
    for loss in losses:
        recipe = replace(new_recipe(max_minutes), name=loss, loss_type=loss, n_negatives=n_negatives)
        r = train_and_measure(setting.split, groups, recipe, "sasrec", b.dim, resolve_device(device), seed)
        out.append(r)
        print(f"  {loss}: {r['epochs']} epochs, {r['train_s']:.0f} s, best valid NDCG@10 {r['valid_ndcg10']:.4f}, "
              f"test {r['test_ndcg10']:.4f}, {r['stopped']}", flush=True)
    floor = min(r["valid_ndcg10"] for r in out)
    print(f"\n06's entire-space SASRec, time to validation NDCG@10 (levels: 90% and 98% of the lowest best, {floor:.4f})")
    print(f"{'loss':>8} {'to 90%':>8} {'to 98%':>8} {'best':>8} {'test':>8} {'epochs':>7} {'seconds':>8}  stopped")
    for r in out:
        reach = time_to_levels(r["history"], floor)
        print(f"{r['recipe']:>8} {reach[0]:>8.0f} {reach[1]:>8.0f} {r['valid_ndcg10']:>8.4f} {r['test_ndcg10']:>8.4f} "
              f"{r['epochs']:>7} {r['train_s']:>8.0f}  {r['stopped']}")
    return out


def cached_teachers(folder, label: str, n_periods: int, n_items: int) -> list:
    """The seed-0 teacher chain ``"<label> | teacher t/n"`` a notebook left in the run cache
    ``folder`` (the newest file per period), checked against the setting's ``n_items``."""
    from .experiment import _safe
    from .halving import cached_results
    found = {}
    for t in range(n_periods):
        name = f"{label} | teacher {t + 1}/{n_periods}"
        try:
            runs = sorted(cached_results([folder], f"{_safe(name)}-0-*.pt"), key=lambda run: run[1].stat().st_mtime)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}, or leave --teachers out to train the teachers here") from None
        for _, _, r in runs:
            if r.variant == name and r.seed == 0:
                found[t] = r.model
    missing = [t + 1 for t in range(n_periods) if t not in found]
    if missing:
        raise ValueError(f"the run cache {folder} has no seed-0 teacher for period(s) {missing} of {n_periods} "
                         f"({label}); run 06 at this budget with cache_runs first, or leave --teachers out")
    for t, m in found.items():
        if m.item_emb.num_embeddings != n_items + 1:
            raise ValueError(f"teacher {t + 1}/{n_periods} in {folder} scores {m.item_emb.num_embeddings - 1} items, "
                             f"the entire space here has {n_items}: another setting (entire_users, budget?)")
    return [found[t] for t in range(n_periods)]


def _fit_and_test(model, d, cfg: TrainConfig, groups_all, hooks=None) -> dict:
    """Train ``model`` on ``d`` to early stopping and score test NDCG@10 of all users: what the
    side-by-side benches keep of a run (history, best validation, test, steps, seconds, stop)."""
    from .train import fit as train_fit
    res = train_fit(model, d, cfg, hooks, groups={"all": groups_all})
    test = float(evaluate(res.model, d, "test", {"all": groups_all}, ks=(10,))
                 .query("metric == 'ndcg'")["value"].iloc[0])
    return {"history": res.history, "best": res.best_valid, "test": test, "steps": res.steps,
            "seconds": res.seconds, "stopped": res.stopped}


def _print_side_by_side(out: list[dict], key: str, header: str, width: int) -> None:
    """The table of a side-by-side bench: per run (labelled ``out[i][key]``), seconds to 90% and
    98% of the lower best validation NDCG@10, the best, test NDCG@10, steps, seconds a step."""
    floor = min(o["best"] for o in out)
    print(f"{header:>{width}} {'to 90%':>8} {'to 98%':>8} {'best':>8} {'test':>8} {'steps':>6} {'s/step':>7} {'seconds':>8}")
    for o in out:
        reach = time_to_levels(o["history"], floor)
        print(f"{o[key]:>{width}} {reach[0]:>8.0f} {reach[1]:>8.0f} {o['best']:>8.4f} {o['test']:>8.4f} "
              f"{o['steps']:>6} {o['seconds'] / max(o['steps'], 1):>7.3f} {o['seconds']:>8.0f}")


def _print_run(label: str, o: dict) -> None:
    """One line of a side-by-side bench as each run ends: steps, seconds, best valid and test
    NDCG@10, why it stopped."""
    print(f"  {label}: {o['steps']} steps, {o['seconds']:.0f} s, best valid NDCG@10 {o['best']:.4f}, "
          f"test {o['test']:.4f}, {o['stopped']}", flush=True)


def _transfer_target(target: str, seed: int, device: str):
    """04's quick setting of ``target`` (ML-1M sources, 1,500 source users): the prepared transfer."""
    from . import experiment
    setting = data.dataset_setting(data.load("ml-1m"), data.load(target), rule="rarest")
    return experiment.prepare_transfer(setting, "quick", seed, device, progress=False, source_users=1500)


def _ant_scratch(prep, seed: int, **content):
    """04's ANT scratch content model on ``prep``'s target (``content``: ContentConfig overrides)."""
    from .methods import ant
    from .models import ContentConfig
    exp = prep.target
    cfg = ant.AntConfig(model=ContentConfig(dim=exp.budget.dim, max_len=exp.data.max_len, **content),
                        variant="scratch")
    return ant.adapted_model(None, prep.target_features, cfg, seed)


def _fit_sasrec(exp, lr: float, seed: int, fused_ce: bool = True) -> dict:
    """SASRec on all of ``exp``'s data (02's ``joint`` at ``lr``), seeded, to early stopping."""
    from .models import SASRec, SASRecConfig
    from .train import seed_everything
    seed_everything(seed)
    model = SASRec(exp.data.n_items, SASRecConfig(dim=exp.budget.dim, max_len=exp.data.max_len))
    model.fused_ce = fused_ce
    seed_everything(seed)
    return _fit_and_test(model, exp.data, exp.train_config(lr=lr, seed=seed, progress=False), exp.groups["all"])


def ecat_student(modes: tuple[str, ...] = ("step", "period"), lr: float = 1.5e-3, seed: int = 0,
                 target: str = "Film-Noir", entire_users: int = 1500, n_periods: int = 2,
                 teachers_dir: str | None = None, device: str = "auto") -> list[dict]:
    """Time to accuracy of 06's ECAT student under each way of computing the teacher's outputs
    (``EcatConfig.teacher_outputs``: "step", a teacher forward pass in every training step, the
    recipe before; "period", computed once per period over the pool), one after another in this
    process on the quick setting (``target`` in an entire space of ``entire_users`` ML-1M users,
    ``n_periods`` periods, the notebook's student schedule at ``lr``, seed ``seed``). Both read
    the same teachers (from ``teachers_dir``, the run cache 06 left, or trained here first) and
    the same selection (computed by the first, kept for the second). The seconds are training
    seconds summed over the periods; the levels are 90% and 98% of the lower final best validation
    NDCG@10 (the last period's best: the student the arm reports)."""
    from . import entire
    from .methods import ecat
    from .methods.common import evaluate_both
    setting = entire.genre_space(data.load("ml-1m"), target, "quick", seed, min_len=5, entire_users=entire_users,
                                 device=device, progress=False)
    exp = setting.target
    b = exp.budget
    cfg = ecat.EcatConfig(backbone_kwargs={"dim": b.dim}, train=exp.fitted_train_config(lr=lr, progress=False),
                          n_periods=n_periods, teacher_train=exp.train_config(max_minutes=30.0, progress=False))
    print(f"entire space {setting.name}: {setting.split.n_users} users, {setting.split.n_items} items; target "
          f"{exp.data.n_users} users; {n_periods} periods, lr {lr:g}, {torch.get_num_threads()} threads", flush=True)
    if teachers_dir:
        teachers = cached_teachers(teachers_dir, target, n_periods, setting.split.n_items)
        print(f"teachers: {n_periods} from {teachers_dir}", flush=True)
    else:
        t0 = time.perf_counter()
        teachers, _ = ecat.train_teachers(setting, cfg, seed)
        print(f"teachers: {n_periods} trained here in {time.perf_counter() - t0:.0f} s", flush=True)
    shared: dict = {}
    out = []
    for mode in modes:
        c = replace(cfg, teacher_outputs=mode)
        student, diag = ecat.continual(setting, c, seed, teachers, cache=shared)
        h, st = diag["history"].copy(), diag["stages"]
        before = st["seconds"].cumsum().shift(fill_value=0.0).to_numpy()
        h["seconds"] = h["seconds"] + before[h["period"].to_numpy()]
        last = h[h["period"] == h["period"].max()]
        metrics, _ = evaluate_both(student, exp.data, exp.groups, mode, seed)
        test = float(metrics.query("metric == 'ndcg' and k == 10 and split == 'test' and group == 'all'")["value"].iloc[0])
        o = {"mode": mode, "history": h, "best": float(last["valid_ndcg10"].max()), "test": test,
             "steps": int(st["steps"].sum()), "seconds": float(st["seconds"].sum()),
             "per_period": st["seconds"].round(0).astype(int).tolist(), "stopped": list(st["stopped"])}
        out.append(o)
        print(f"  {mode}: {o['steps']} steps, {o['seconds']:.0f} s (periods {o['per_period']}), best valid "
              f"NDCG@10 {o['best']:.4f}, test {test:.4f}; {'; '.join(o['stopped'])}", flush=True)
    floor = min(o["best"] for o in out)
    print(f"\n06's ECAT student, teacher outputs per step vs once per period (levels: 90% and 98% of the lower "
          f"final best, {floor:.4f}; seconds summed over the periods)")
    _print_side_by_side(out, "mode", "teacher", 8)
    return out


def cross_entropy(lr: float = 3e-3, seed: int = 0, device: str = "auto") -> list[dict]:
    """Time to accuracy of SASRec trained on all of ML-100K (02's ``joint``: the quick budget's
    schedule, windows of 50, full softmax over 1,682 items) with the loss through
    ``F.cross_entropy`` on the whole (P, N) logits (``fused_ce=False``, the recipe before) and
    through the chunked cross-entropy (``models.base.next_item_ce``, the default), side by side
    in this process. The two compute the same loss and gradients up to float rounding, so they
    should reach the same accuracy and differ in seconds; float rounding makes the two runs part
    after a while, like another draw of the noise. Prints the seconds to 90% and 98% of the
    lower best validation NDCG@10, the best, test NDCG@10, steps and seconds a step."""
    from . import experiment
    exp = experiment.prepare("ml-100k", "quick", seed, device, progress=False, cache=False)
    out = []
    for fused in (False, True):
        o = {"ce": "chunked" if fused else "whole", **_fit_sasrec(exp, lr, seed, fused_ce=fused)}
        out.append(o)
        _print_run(o["ce"], o)
    print(f"\nSASRec on {exp.dataset.name} (lr {lr:g}, seed {seed}): cross-entropy on the whole logits vs chunked "
          "(levels: 90% and 98% of the lower best)")
    _print_side_by_side(out, "ce", "ce", 8)
    return out


def experts(target: str = "amazon-scientific", lr: float = 1.5e-3, seed: int = 0, device: str = "auto") -> list[dict]:
    """Time to accuracy of 04's content model (ANT scratch on ``target``, the rate 04's quick grid
    chose, the quick schedule with the warm-up fitted to the target) with ANT's per-expert
    whitening layers (one ``nn.Dropout`` and ``nn.Linear`` each, ``fused_experts=False``) and
    with the batched experts (``True``, the default), side by side in this process. The two
    compute the same function with the same dropout distribution and draw other masks, so they
    should reach the same accuracy and differ in seconds. Prints the seconds to 90% and 98% of
    the lower best validation NDCG@10, the best, test NDCG@10, steps and seconds a step."""
    from .train import seed_everything
    prep = _transfer_target(target, seed, device)
    exp, d = prep.target, prep.target.data
    out = []
    for fused in (False, True):
        model = _ant_scratch(prep, seed, fused_experts=fused)
        seed_everything(seed)
        o = {"experts": "batched" if fused else "per expert",
             **_fit_and_test(model, d, exp.fitted_train_config(lr=lr, seed=seed, progress=False), exp.groups["all"])}
        out.append(o)
        _print_run(o["experts"], o)
    print(f"\nANT scratch on {exp.dataset.name} (lr {lr:g}, seed {seed}): whitening experts per expert vs batched "
          "(levels: 90% and 98% of the lower best)")
    _print_side_by_side(out, "experts", "experts", 10)
    return out


DROPOUT_MODELS = ("sasrec", "content", "metarec")


def dropout(models: tuple[str, ...] = DROPOUT_MODELS, seed: int = 0, device: str = "auto") -> list[dict]:
    """Time to accuracy with torch's dropout masks (``bernoulli_``, and ``rand`` in the batched
    experts: ``models.dropout.native()``, the recipe before) and with the 16-bit CPU masks of
    :mod:`seqtransfer.models.dropout` (the default), side by side in this process, for each of
    ``models``: "sasrec", SASRec on all of ML-100K (02's ``joint``, lr 3e-3); "content", 04's
    content model (ANT scratch on Amazon Scientific, lr 1.5e-3); "metarec", 05's MetaRec on its
    ML-100K target with the four ML-1M genre sources (meta steps, VQ, lr 3e-3), each on the quick
    schedule. Same function and mask distribution, other draws: the two should reach about the
    same accuracy and differ in seconds. Prints, per model, the seconds to 90% and 98% of the
    lower best validation NDCG@10, the best, test NDCG@10, steps and seconds a step."""
    from . import experiment
    from .methods import metarec
    from .models import MultiDomainConfig, VQConfig
    from .models import dropout as D
    from .train import seed_everything
    unknown = sorted(set(models) - set(DROPOUT_MODELS))
    if unknown:
        raise ValueError(f"unknown model(s) {unknown} for --dropout; choose from {', '.join(DROPOUT_MODELS)}")
    out = []
    for name in models:
        if name == "sasrec":
            exp = experiment.prepare("ml-100k", "quick", seed, device, progress=False, cache=False)

            def run():
                return _fit_sasrec(exp, 3e-3, seed)
        elif name == "content":
            prep = _transfer_target("amazon-scientific", seed, device)
            exp = prep.target

            def run():
                model = _ant_scratch(prep, seed)
                seed_everything(seed)
                return _fit_and_test(model, exp.data, exp.fitted_train_config(lr=1.5e-3, seed=seed, progress=False),
                                     exp.groups["all"])
        else:
            source = data.load("ml-1m")
            sources = metarec.largest_domains(source, 4, "rarest")
            setting = data.dataset_setting(source, data.load("ml-100k"), rule="rarest", sources=sources)
            prep = experiment.prepare_domains(setting, "quick", seed, device, max_len=50, target_user_frac=0.2,
                                              progress=False, cache=False, source_eval_users=1000,
                                              source_users=1500)
            exp = prep.target

            def run():
                cfg = metarec.MetaRecConfig(model=MultiDomainConfig(dim=exp.budget.dim, max_len=50,
                                                                    vq=VQConfig(n_codes=256)))
                cfg = replace(metarec.spec_config(cfg, metarec.SPECS["MetaRec"]),
                               train=exp.fitted_train_config(lr=3e-3, seed=seed, progress=False))
                res = metarec.fit(exp.data, exp.groups, cfg, seed, sources=prep.sources)
                return {"history": res.history, "best": res.train.best_valid, "test": res.ndcg10("all"),
                        "steps": res.train.steps, "seconds": res.train.seconds, "stopped": res.train.stopped}
        rows = []
        for masks in ("torch", "16-bit"):
            with D.native(masks == "torch"):
                o = {"masks": masks, **run()}
            rows.append(o)
            _print_run(f"{name}, {masks} masks", o)
        print(f"\n{name} (seed {seed}): torch's dropout masks vs 16-bit CPU masks (levels: 90% and 98% of the "
              "lower best)")
        _print_side_by_side(rows, "masks", "masks", 8)
        print(flush=True)
        out += [{"model": name, **o} for o in rows]
    return out


def adversary(lr: float = 3e-3, seed: int = 0, device: str = "auto") -> list[dict]:
    """Time to accuracy of 02's GA arm (alignment and the adversary, quick's settings on all of
    ML-100K, ``lr``, seed ``seed``) with the discriminator reading a ``represent`` pass of its own
    (``adv_pass="separate"``, the recipe before) and reading the loss's own encoder pass
    (``"shared"``, the default), one after the other in this process. The shared pass saves an
    encoder pass per inner batch and shares one dropout draw between the loss and the adversary,
    so the two differ by that draw and the seconds. Prints, per recipe, the seconds to 90% and
    98% of the lower best validation NDCG@10, the best, test NDCG@10, outer steps and seconds a step."""
    from . import experiment
    from .methods import gradient_alignment as ga
    exp = experiment.prepare("ml-100k", "quick", seed, device, progress=False, cache=False)
    out = []
    for adv_pass in ("separate", "shared"):
        cfg = exp.config(ga.GradientAlignmentConfig, backbone="sasrec", use_alignment=True, use_adversarial=True,
                         adv_pass=adv_pass)
        cfg = replace(cfg, train=replace(cfg.train, lr=lr, seed=seed, progress=False))
        res = ga.fit(exp.data, exp.groups, cfg, seed)
        o = {"pass": adv_pass, "history": res.history, "best": res.train.best_valid, "test": res.ndcg10("all"),
             "steps": res.train.steps, "seconds": res.train.seconds, "stopped": res.train.stopped}
        out.append(o)
        _print_run(f"adversary, {adv_pass} pass", o)
    print(f"\n02's GA (seed {seed}, lr {lr:g}): the adversary on a represent() pass of its own vs on the loss's pass "
          "(levels: 90% and 98% of the lower best; steps are outer updates of 4 inner batches)")
    _print_side_by_side(out, "pass", "pass", 9)
    return out


def trim(target: str = "amazon-scientific", lrs: dict[str, float] | None = None, seed: int = 0,
         device: str = "auto") -> list[dict]:
    """Time to accuracy of 04's target arms on ``target`` with training batches padded to the
    window (``max_len`` 50, as before) and cut to the batch's longest window
    (:func:`seqtransfer.data.trim_right`, the default now), side by side in this process: the
    content model trained from scratch (ANT scratch) and the ID-only SASRec, each at its rate in
    ``lrs`` (default: the rates 04's quick grid chose), the quick budget's schedule with the
    warm-up fitted to the target. The cut changes no model output, only the dropout draws, so
    both columns should reach the same accuracy and differ in seconds. Prints the seconds to 90%
    and 98% of the lower best validation NDCG@10 of each pair, the best, test NDCG@10, steps."""
    from .models import SASRec, SASRecConfig
    from .train import Hooks, clip_and_step, seed_everything
    lrs = lrs or {"ANT scratch": 1.5e-3, "SASRec ID": 3e-3}
    prep = _transfer_target(target, seed, device)
    exp, d = prep.target, prep.target.data
    lengths = (d.train_inputs > 0).sum(1).float()
    print(f"target {exp.dataset.name}: {d.n_users} users, {len(lengths)} windows, window length median "
          f"{lengths.median():.0f}, max {lengths.max():.0f} (padded to {d.max_len})", flush=True)

    def padded(ctx):                       # the step before the cut: (B, max_len) batches
        ctx.optimizer.zero_grad(set_to_none=True)
        loss = ctx.model.loss(d.train_inputs[ctx.batch], d.train_targets[ctx.batch], d.train_users[ctx.batch])
        loss.backward()
        clip_and_step(ctx)
        return loss.item()

    def model_of(arm: str):
        if arm == "ANT scratch":
            return _ant_scratch(prep, seed)
        seed_everything(seed)
        return SASRec(d.n_items, SASRecConfig(dim=exp.budget.dim, max_len=d.max_len))

    out = []
    for arm, lr in lrs.items():
        for batches, hooks in (("padded", Hooks(step=padded)), ("cut", Hooks())):
            model = model_of(arm)
            seed_everything(seed)
            cfg = exp.fitted_train_config(lr=lr, seed=seed, progress=False)
            o = {"arm": arm, "batches": batches, **_fit_and_test(model, d, cfg, exp.groups["all"], hooks)}
            out.append(o)
            _print_run(f"{arm}, {batches}", o)
    print(f"\n04's target arms on {exp.dataset.name}, padded vs cut batches (levels: 90% and 98% of the pair's lower best)")
    print(f"{'arm':>12} {'batches':>8} {'to 90%':>8} {'to 98%':>8} {'best':>8} {'test':>8} {'steps':>6} {'seconds':>8}  stopped")
    for i, o in enumerate(out):
        reach = time_to_levels(o["history"], min(o["best"], out[i ^ 1]["best"]))
        print(f"{o['arm']:>12} {o['batches']:>8} {reach[0]:>8.0f} {reach[1]:>8.0f} {o['best']:>8.4f} {o['test']:>8.4f} "
              f"{o['steps']:>6} {o['seconds']:>8.0f}  {o['stopped']}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seqtransfer bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--backbones", nargs="+", default=["sasrec", "gru4rec"], choices=["sasrec", "gru4rec"])
    p.add_argument("--compare", action="store_true",
                   help="train the old recipe and the new default side by side in this run")
    p.add_argument("--levers", action="store_true", help="time one optimisation step per speed lever")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile (a minute to compile) out of --levers")
    p.add_argument("--max-minutes", type=float, default=30.0,
                   help="wall-clock cap per model for the new recipe (default 30; it early-stops first)")
    p.add_argument("--max-users", type=int, default=None, help="sample this many users (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="override the epoch cap of every recipe")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", metavar="DIR", help="print where the batch in DIR (a `seqtransfer run --out`) spent "
                   "its time, per notebook and per section, and train nothing")
    p.add_argument("--runs", metavar="DIR", nargs="+", help="with --batch: also the training seconds of every "
                   "arm, pre-training and teacher in the batch's run cache DIR (its data/runs)")
    p.add_argument("--metarec-pretrain", metavar="LRS", help="time 05's joint pre-training (ML-1M genre sources, "
                   "quick schedule) at these comma-separated learning rates, side by side, and train nothing else")
    p.add_argument("--halving", metavar="DIR", nargs="+", help="from the run cache(s) DIR (every grid point of a "
                   "batch), what successive halving would choose against the full grid, and its cost; trains nothing")
    p.add_argument("--rungs", default="1,2,3,5", help="with --halving: rung lengths in validations after the warm-up")
    p.add_argument("--keep", default="1,2", help="with --halving: how many rates continue past the rung")
    p.add_argument("--entire-space", metavar="LOSSES", help="time 06's entire-space SASRec (ECAT's "
                   "teacher) with these comma-separated training losses (ce, sampled), side by side")
    p.add_argument("--cross-entropy", action="store_true", help="time SASRec on ML-100K with the full-softmax "
                   "loss on the whole logits against the chunked cross-entropy, side by side")
    p.add_argument("--experts", action="store_true", help="time 04's content model (ANT scratch on Amazon "
                   "Scientific) with ANT's per-expert whitening layers against the batched experts, side by side")
    p.add_argument("--dropout", metavar="MODELS", nargs="?", const=",".join(DROPOUT_MODELS),
                   help="time these comma-separated models (sasrec, content, metarec; default all) with torch's "
                   "dropout masks against the 16-bit CPU masks, side by side")
    p.add_argument("--adversary", action="store_true", help="time 02's GA arm with the discriminator on a "
                   "represent() pass of its own against on the loss's own encoder pass, side by side (--lr, default 3e-3)")
    p.add_argument("--trim", action="store_true", help="time 04's Amazon target arms (ANT scratch, the ID-only "
                   "SASRec) with batches padded to the window and cut to their longest window, side by side")
    p.add_argument("--patience", metavar="DIR", nargs="+", help="from the run cache(s) DIR, what a shorter "
                   "early-stopping patience would save and lose, run by run; trains nothing")
    p.add_argument("--patiences", default="2,3,4", help="with --patience: the patiences to replay")
    p.add_argument("--budget-patience", type=int, default=5, help="with --patience: the patience the runs trained with")
    p.add_argument("--ecat-student", metavar="MODES", help="time 06's ECAT student with these comma-separated "
                   "ways of computing the teacher's outputs (step, period), side by side")
    p.add_argument("--teachers", metavar="DIR", help="with --ecat-student: read the teachers from this run "
                   "cache (06's data/runs) instead of training them first")
    p.add_argument("--lr", type=float, default=None, help="with --ecat-student: the student's rate (default "
                   "1.5e-3); with --adversary: GA's (default 3e-3)")
    a = p.parse_args(argv)
    if a.patience:
        from .stopping import print_patience
        try:
            print_patience(a.patience, tuple(int(x) for x in a.patiences.split(",")), a.budget_patience)
        except (FileNotFoundError, ValueError) as err:
            print(f"seqtransfer bench: {err}", file=sys.stderr)
            return 2
        return 0
    if a.ecat_student:
        if a.threads:
            torch.set_num_threads(a.threads)
        try:
            ecat_student(tuple(a.ecat_student.split(",")), lr=a.lr or 1.5e-3, seed=a.seed, teachers_dir=a.teachers,
                         device=a.device)
        except (FileNotFoundError, ValueError) as err:
            print(f"seqtransfer bench: {err}", file=sys.stderr)
            return 2
        return 0
    if a.cross_entropy:
        if a.threads:
            torch.set_num_threads(a.threads)
        cross_entropy(seed=a.seed, device=a.device)
        return 0
    if a.experts:
        if a.threads:
            torch.set_num_threads(a.threads)
        experts(seed=a.seed, device=a.device)
        return 0
    if a.dropout:
        if a.threads:
            torch.set_num_threads(a.threads)
        try:
            dropout(tuple(a.dropout.split(",")), seed=a.seed, device=a.device)
        except ValueError as err:
            print(f"seqtransfer bench: {err}", file=sys.stderr)
            return 2
        return 0
    if a.adversary:
        if a.threads:
            torch.set_num_threads(a.threads)
        adversary(lr=a.lr or 3e-3, seed=a.seed, device=a.device)
        return 0
    if a.trim:
        if a.threads:
            torch.set_num_threads(a.threads)
        trim(seed=a.seed, device=a.device)
        return 0
    if a.entire_space:
        if a.threads:
            torch.set_num_threads(a.threads)
        entire_space(tuple(a.entire_space.split(",")), seed=a.seed, max_minutes=a.max_minutes, device=a.device)
        return 0
    if a.halving:
        from .halving import print_halving
        try:
            print_halving(a.halving, tuple(int(x) for x in a.rungs.split(",")),
                          tuple(int(x) for x in a.keep.split(",")))
        except (FileNotFoundError, ValueError) as err:
            print(f"seqtransfer bench: {err}", file=sys.stderr)
            return 2
        return 0
    if a.metarec_pretrain:
        if a.threads:
            torch.set_num_threads(a.threads)
        metarec_pretrain(tuple(float(x) for x in a.metarec_pretrain.split(",")), seed=a.seed,
                         max_minutes=a.max_minutes, device=a.device)
        return 0
    if a.batch:
        from .timing import print_arm_times, print_batch_times
        try:
            print_batch_times(a.batch)
            if a.runs:
                print_arm_times(a.runs)
        except (FileNotFoundError, ValueError) as err:
            print(f"seqtransfer bench: {err}", file=sys.stderr)
            return 2
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    dim = get_budget("quick").dim
    ds = data.sample_users(data.load(a.dataset), a.max_users, a.seed)
    split = data.leave_one_out(ds)
    groups = data.activeness_groups(split.activeness)
    print(f"dataset {ds.name}: {ds.n_users} users, {ds.n_items} items, {len(ds.inter)} interactions; "
          f"device {device}, {torch.get_num_threads()} threads, seed {a.seed}", flush=True)
    if a.levers:
        levers(split, dim, seed=a.seed, compile=not a.no_compile)
        return 0
    recipes = ([OLD_RECIPE] if a.compare else []) + [new_recipe(a.max_minutes)]
    if a.epochs:
        recipes = [replace(r, epochs=a.epochs) for r in recipes]
    for backbone in a.backbones:
        results = []
        for r in recipes:
            print(f"training {backbone}, {r.name} recipe: {r}", flush=True)
            results.append(train_and_measure(split, groups, r, backbone, dim, device, a.seed))
        print_table(results)
        sys.stdout.flush()
    return 0
