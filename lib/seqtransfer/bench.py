"""Benchmark: SASRec (or GRU4Rec) on a real dataset on whatever device is present.

Prints epoch time, training positions per second, full-ranking evaluation time for all users,
and the final validation/test NDCG@10 (all users). Targets live here, not in unit tests.
"""
from __future__ import annotations

import argparse
import time

from . import data
from .budget import get_budget
from .evaluate import evaluate
from .methods import baseline
from .train import TrainConfig, resolve_device


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seqtransfer bench", description=__doc__)
    p.add_argument("--dataset", default="ml-1m")
    p.add_argument("--backbone", default="sasrec", choices=["sasrec", "gru4rec"])
    p.add_argument("--budget", default="quick", choices=["smoke", "quick", "full"])
    p.add_argument("--epochs", type=int, default=None, help="override the budget's epochs")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop training after this many minutes (the best validation weights are kept)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    b = get_budget(a.budget, **({"epochs": a.epochs} if a.epochs else {}))
    device = resolve_device(a.device)
    ds = data.sample_users(data.load(a.dataset), b.max_users, a.seed)
    split = data.leave_one_out(ds)
    groups = data.activeness_groups(split.activeness)
    seqs = data.build_sequences(split, b.max_len)
    cfg = baseline.BaselineConfig(
        backbone=a.backbone, backbone_kwargs={"dim": b.dim},
        train=TrainConfig(epochs=b.epochs, max_steps=b.max_steps, patience=b.patience,
                          eval_every=b.eval_every, batch_size=b.batch_size, device=str(device),
                          max_minutes=a.max_minutes, progress=False))
    res = baseline.fit(seqs, groups, cfg, seed=a.seed)
    h = res.history
    epoch_s = h["seconds"].diff().fillna(h["seconds"]).median()
    t = time.perf_counter()
    evaluate(res.model, seqs.to(device), "test", groups.masks)
    eval_s = time.perf_counter() - t
    print(f"dataset {ds.name}: {ds.n_users} users, {ds.n_items} items; {a.backbone}, budget {b.name}, "
          f"device {device}, seed {a.seed}")
    print(f"epochs run            {len(h)} (stopped: {res.train.stopped})")
    print(f"epoch time (median)   {epoch_s:.1f} s incl. validation")
    print(f"training positions/s  {seqs.n_train_positions / epoch_s:,.0f}")
    print(f"full-ranking eval     {eval_s:.2f} s for {seqs.n_users} users")
    evals = h.dropna(subset=["valid_ndcg10"]) if "valid_ndcg10" in h else h.iloc[:0]
    for level in (0.05, 0.10, 0.15):
        hit = evals[evals["valid_ndcg10"] >= level]
        when = (f"{hit['seconds'].iloc[0]:.0f} s (epoch {int(hit['epoch'].iloc[0]) + 1})"
                if len(hit) else "not reached")
        print(f"valid NDCG@10 >= {level:.2f}  {when}")
    print(f"best epoch            {res.train.best_epoch + 1} of {len(h)}; training {res.train.seconds:.0f} s")
    print(f"valid NDCG@10 (all)   {res.ndcg10('all', 'valid'):.4f}")
    print(f"test  NDCG@10 (all)   {res.ndcg10('all', 'test'):.4f}  head {res.ndcg10('head'):.4f}  "
          f"tail {res.ndcg10('tail'):.4f}")
    return 0
