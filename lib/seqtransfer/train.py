"""The one training loop every method drives (minGPT-style: nothing in it is specific to a
model or a method).

What it does: picks the device (``"auto"`` = CUDA when present), runs bf16 autocast on CUDA,
shuffles training windows with a per-epoch seeded generator (so a resumed run sees exactly the
batches an uninterrupted one would), validates every ``eval_every`` epochs on the validation
split (full ranking, NDCG@10 of all users), keeps the best weights, stops early after
``patience`` evaluations without improvement, checkpoints after each evaluation and resumes
from the checkpoint, and stops with a clear error on a non-finite loss.

Methods customise it through :class:`Hooks`: which windows form the batches, what one
optimisation step does, and what to observe after each step.
"""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch

from .data.batches import SeqData
from .evaluate import evaluate
from .train_progress import TrainProgress, planned_steps


@dataclass
class TrainConfig:
    epochs: int = 200                 # upper bound on passes over the training windows
    batch_size: int = 128             # windows per optimisation step
    lr: float = 3e-3                  # peak AdamW learning rate
    warmup_steps: int = 0             # linear warm-up from lr/warmup_steps to lr (0: none; budgets use 100)
    plateau_factor: float = 1.0       # multiply lr by this after each evaluation without a
                                      # better valid NDCG@10 (1.0: constant lr after warm-up)
    weight_decay: float = 0.0         # AdamW decoupled weight decay
    grad_clip: float | None = 5.0     # max global gradient norm (None: no clipping)
    patience: int = 10                # evaluations without a better valid NDCG@10 before stopping
    min_steps: int = 0                # evaluations before this step count toward neither patience nor
                                      # the plateau decay (e.g. warmup_steps: a tiny target whose epoch
                                      # is a few steps would otherwise stop inside its warm-up)
    eval_every: int = 1               # epochs between validations
    max_steps: int | None = None      # hard cap on optimisation steps (smoke budget)
    max_minutes: float | None = None  # wall-clock cap on training
    rung: int | None = None           # stop after this many validations past the warm-up: the short
                                      # run of successive halving (a run-length cap like max_steps, so
                                      # the same run continues from its checkpoint without it)
    step_batches: int = 1             # batches one step trains: warmup_steps, min_steps and a rung
                                      # count batches, step x step_batches (gradient alignment's
                                      # outer update trains k inner batches; its inner steps run
                                      # the lr schedule on the batch clock)
    device: str = "auto"              # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: bool = True                  # bf16 autocast when on CUDA (ignored on CPU)
    seed: int = 0                     # seeds weights init (caller), shuffling and dropout
    eval_batch_size: int = 2048       # users per evaluation batch
    checkpoint_dir: str | None = None # where last.pt lives; None: no checkpoints
    resume: bool = True               # continue from checkpoint_dir/last.pt when it exists
    progress: bool = True             # tqdm progress bars


def cap_steps(cfg: TrainConfig, max_steps: int | None) -> TrainConfig:
    """``cfg`` with at most ``max_steps`` steps, never more than its own cap (None: unchanged)."""
    if max_steps is None:
        return cfg
    from dataclasses import replace
    return replace(cfg, max_steps=max_steps if cfg.max_steps is None else min(max_steps, cfg.max_steps))


def fit_warmup(cfg: TrainConfig, steps_per_epoch: int, epochs: int = 2) -> TrainConfig:
    """``cfg`` with a warm-up no longer than ``epochs`` epochs of ``steps_per_epoch`` steps, and
    early stopping counting from its end (``min_steps``). A small target (Film-Noir: about 10
    steps an epoch) reaches its best validation within a few epochs: under the budget's 100-step
    warm-up it would stop before ever training at its full learning rate."""
    from dataclasses import replace
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(f"steps_per_epoch and epochs must be >= 1, got {steps_per_epoch} and {epochs}")
    warm = min(cfg.warmup_steps, epochs * steps_per_epoch)
    return replace(cfg, warmup_steps=warm, min_steps=max(cfg.min_steps, warm))


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; an unavailable CUDA request is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'.")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class StepContext:
    """What a step hook sees."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    data: SeqData
    batch: torch.Tensor            # (B,) indices of training windows
    epoch: int
    step: int
    cfg: TrainConfig
    autocast: Callable[[], object]  # context manager factory (bf16 on CUDA, no-op on CPU)
    lr_scale: float = 1.0           # plateau decay so far: a hook that steps several batches
                                    # per loop step sets lr_at(cfg, batch, lr_scale) itself


def shuffled_batches(data: SeqData, cfg: TrainConfig, gen: torch.Generator,
                     windows: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Default batching: all (or the given) windows in a seeded random order."""
    idx = torch.arange(len(data.train_inputs)) if windows is None else windows.cpu()
    perm = idx[torch.randperm(len(idx), generator=gen)]
    for s in range(0, len(perm), cfg.batch_size):
        yield perm[s:s + cfg.batch_size].to(data.device)


def default_step(ctx: StepContext) -> float:
    """Plain step: mean next-item loss over the batch's real positions."""
    ctx.optimizer.zero_grad(set_to_none=True)
    with ctx.autocast():
        loss = ctx.model.loss(*ctx.data.window_batch(ctx.batch))
    loss.backward()
    clip_and_step(ctx)
    return loss.item()


def clip_and_step(ctx: StepContext) -> None:
    if ctx.cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), ctx.cfg.grad_clip)
    ctx.optimizer.step()


@dataclass
class Hooks:
    """Method-specific behaviour; every field is optional."""

    batches: Callable[[SeqData, TrainConfig, torch.Generator], Iterator[torch.Tensor]] | None = None
    step: Callable[[StepContext], float] | None = None
    # called after every step; one with ``state()``/``load_state(saved)`` (a ConflictProbe) is
    # checkpointed and restored with the model
    after_step: Callable[[StepContext], None] | None = None
    after_eval: Callable[[int, pd.DataFrame], None] | None = None
    state: Callable[[], dict] | None = None               # extra state to checkpoint
    load_state: Callable[[dict], None] | None = None      # restore it on resume
    # validation metrics (group, metric, k, value; NDCG@10 of group "all" selects) in place of
    # ranking ``data``'s validation split: a multi-domain pre-training pools its sources' users
    validate: Callable[[torch.nn.Module], pd.DataFrame] | None = None


@dataclass
class TrainResult:
    model: torch.nn.Module          # with the best validation weights loaded
    history: pd.DataFrame           # epoch, step, loss, valid_ndcg10, seconds
    best_epoch: int
    best_valid: float               # valid NDCG@10 (all users) of the kept weights
    stopped: str                    # why training ended
    device: str
    seconds: float                  # training wall time (this call; excludes resumed time)
    steps: int

    @property
    def early_stopped(self) -> bool:
        """True when validation stopped improving; False when a cap (epochs, max_steps,
        max_minutes) ended training, so the model may still have been improving."""
        return self.stopped.startswith("early stop")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Restore RNG states saved by ``_rng_state``. Generator states are CPU byte tensors by
    contract, so they are moved back to the CPU first: a checkpoint loaded with
    ``map_location="cuda"`` (or saved on another device) carries them on that device."""
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _check_loss(loss: float, model: torch.nn.Module, epoch: int, step: int, cfg: TrainConfig,
                ckpt: Path | None) -> None:
    """Raise FloatingPointError on a NaN or infinite training loss."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"{type(model).__name__}: training loss became {loss} at epoch {epoch}, step {step} "
            f"(peak lr={cfg.lr:g}). Lower the learning rate or set grad_clip; the last good checkpoint is "
            f"{ckpt if ckpt and ckpt.exists() else 'not saved (no checkpoint_dir)'}.")


def _validate(model: torch.nn.Module, data: SeqData, groups, cfg: TrainConfig, epoch: int) -> pd.DataFrame:
    """Validation metrics at NDCG@10; non-finite scores raise naming the model, split and epoch."""
    try:
        return evaluate(model, data, "valid", groups, ks=(10,), batch_size=cfg.eval_batch_size)
    except FloatingPointError as err:
        raise FloatingPointError(f"validation after epoch {epoch}: {err}") from err


def _check_metric(ndcg: float, model: torch.nn.Module, epoch: int) -> None:
    """A NaN validation NDCG@10 is never compared (``nan > best`` is False, ``best < nan`` too):
    it raises, so a broken model can neither be kept nor silently count as 'no improvement'."""
    if not math.isfinite(ndcg):
        raise FloatingPointError(f"{type(model).__name__}: validation NDCG@10 is {ndcg} after epoch "
                                 f"{epoch} (split 'valid'); an empty 'all' group or a broken model.")


def lr_at(cfg: TrainConfig, step: int, scale: float = 1.0) -> float:
    """The learning rate of optimisation step ``step`` (0-based): linear warm-up over
    ``cfg.warmup_steps`` steps to ``cfg.lr``, times ``scale`` (the plateau decay so far)."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    return cfg.lr * warm * scale


def fit(model: torch.nn.Module, data: SeqData, cfg: TrainConfig | None = None,
        hooks: Hooks | None = None, groups: dict[str, np.ndarray] | None = None) -> TrainResult:
    """Train ``model`` on ``data`` and return it with its best validation weights.

    Validation always ranks all users; early stopping and model selection read NDCG@10 of the
    ``"all"`` group on the validation split only (never test). The learning rate follows
    :func:`lr_at`; every optimiser the step hook uses through ``ctx.optimizer`` gets it.
    """
    cfg = cfg or TrainConfig()
    if cfg.warmup_steps < 0 or not 0.0 < cfg.plateau_factor <= 1.0:
        raise ValueError(f"warmup_steps must be >= 0 and plateau_factor in (0, 1], got "
                         f"{cfg.warmup_steps} and {cfg.plateau_factor}")
    if cfg.min_steps < 0:
        raise ValueError(f"min_steps must be >= 0, got {cfg.min_steps}")
    if cfg.step_batches < 1:
        raise ValueError(f"step_batches must be at least 1 (batches a step trains), got {cfg.step_batches}")
    if cfg.rung is not None and cfg.rung < 1:
        raise ValueError(f"rung must be at least one validation (or None), got {cfg.rung}")
    hooks = hooks or Hooks()
    device = resolve_device(cfg.device)
    model.to(device)
    data = data.to(device)
    use_amp = cfg.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step_fn = hooks.step or default_step
    batches_fn = hooks.batches or shuffled_batches

    ckpt = Path(cfg.checkpoint_dir) / "last.pt" if cfg.checkpoint_dir else None
    start_epoch, step, best, best_epoch, bad, scale = 0, 0, -math.inf, -1, 0, 1.0
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict] = []
    if ckpt is not None and cfg.resume and ckpt.exists():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        if saved["config"] != _resumable(cfg):
            raise RuntimeError(f"checkpoint {ckpt} was written with different settings; delete it "
                               "or pass resume=False to start over.")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch, step, best, best_epoch, bad = (saved[k] for k in ("epoch", "step", "best", "best_epoch", "bad"))
        scale = saved.get("lr_scale", 1.0)
        best_state, history = saved["best_state"], saved["history"]
        _set_rng_state(saved["rng"])
        if hooks.load_state and "hooks" in saved:
            hooks.load_state(saved["hooks"])
        if "after_step" in saved and hasattr(hooks.after_step, "load_state"):
            hooks.after_step.load_state(saved["after_step"])

    t0, c0 = time.perf_counter(), time.process_time()
    stopped = f"epochs={cfg.epochs}"
    if bad >= cfg.patience:
        stopped = "early stop (resumed)"
        start_epoch = cfg.epochs
    elif _at_rung(history, cfg):
        stopped = f"rung={cfg.rung} (resumed)"
        start_epoch = cfg.epochs
    # the bar counts steps; one epoch's batches are counted with a throwaway generator
    bar = TrainProgress(planned_steps(batches_fn(data, cfg, torch.Generator()) if cfg.progress else 0, cfg.epochs,
                                      cfg.max_steps, start_epoch, step), cfg.progress, cfg.epochs, initial=step)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        losses = []
        for batch in batches_fn(data, cfg, gen):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, step, scale)
            ctx = StepContext(model, optimizer, data, batch, epoch, step, cfg, autocast, scale)
            loss = step_fn(ctx)
            _check_loss(loss, model, epoch, step, cfg, ckpt)                  # guard: NaN/inf raise
            losses.append(loss)
            step += 1
            bar.step(epoch)
            if hooks.after_step:
                hooks.after_step(ctx)
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        row = {"epoch": epoch, "step": step, "loss": float(np.mean(losses)) if losses else np.nan,
               # the rate of the epoch's last batch, on the batch clock (gradient alignment's
               # inner steps follow it, step_batches to a step)
               "lr": lr_at(cfg, max(step * cfg.step_batches - 1, 0), scale), "seconds": time.perf_counter() - t0,
               "cpu_seconds": time.process_time() - c0}
        out_of_steps = cfg.max_steps is not None and step >= cfg.max_steps
        out_of_time = cfg.max_minutes is not None and (time.perf_counter() - t0) > 60 * cfg.max_minutes
        last = epoch == cfg.epochs - 1 or out_of_steps or out_of_time
        if (epoch + 1) % cfg.eval_every == 0 or last:
            t_eval = time.perf_counter()
            metrics = hooks.validate(model) if hooks.validate else _validate(model, data, groups, cfg, epoch)
            ndcg = float(metrics.query("group == 'all' and metric == 'ndcg'")["value"].iloc[0]) \
                if groups is None or "all" in groups else float(metrics.query("metric == 'ndcg'")["value"].iloc[0])
            _check_metric(ndcg, model, epoch)                                  # guard: never keep NaN
            row["valid_ndcg10"] = ndcg
            row["eval_seconds"] = time.perf_counter() - t_eval
            if hooks.after_eval:
                hooks.after_eval(epoch, metrics)
            if ndcg > best:
                best, best_epoch, bad = ndcg, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            elif step * cfg.step_batches >= cfg.min_steps:
                bad += 1
                scale *= cfg.plateau_factor
            if ckpt is not None:
                _save(ckpt, model, optimizer, cfg, epoch + 1, step, best, best_epoch, bad,
                      best_state, history + [row], hooks, scale)
        history.append(row)
        if "valid_ndcg10" in row:
            bar.evaluated(epoch, row["valid_ndcg10"])
        if bad >= cfg.patience:
            stopped = f"early stop: no better valid NDCG@10 for {cfg.patience} evaluations"
            break
        if out_of_steps:
            stopped = f"max_steps={cfg.max_steps}"
            break
        if _at_rung(history, cfg):
            stopped = f"rung={cfg.rung}"
            break
        if out_of_time:
            stopped = f"max_minutes={cfg.max_minutes}"
            break
    bar.close(stopped)
    model.load_state_dict(best_state)
    return TrainResult(model, pd.DataFrame(history), best_epoch, best, stopped, str(device),
                       time.perf_counter() - t0, step)


def peak_validations(history: list[dict], cfg: TrainConfig) -> int:
    """Validations so far after the warm-up's last step (what a ``rung`` counts)."""
    return sum(1 for row in history
               if "valid_ndcg10" in row and row["step"] * cfg.step_batches >= cfg.warmup_steps)


def _at_rung(history: list[dict], cfg: TrainConfig) -> bool:
    return cfg.rung is not None and peak_validations(history, cfg) >= cfg.rung


def _resumable(cfg: TrainConfig) -> dict:
    """Settings that must match for a checkpoint to be resumed (not the run-length caps)."""
    d = asdict(cfg)
    for k in ("epochs", "max_steps", "max_minutes", "rung", "progress", "resume", "checkpoint_dir",
              "device", "eval_batch_size", "patience"):
        d.pop(k)
    return d


def _save(path: Path, model, optimizer, cfg, epoch, step, best, best_epoch, bad, best_state,
          history, hooks: Hooks, lr_scale: float = 1.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "config": _resumable(cfg), "epoch": epoch, "step": step, "best": best,
               "best_epoch": best_epoch, "bad": bad, "best_state": best_state,
               "history": history, "rng": _rng_state(), "lr_scale": lr_scale}
    if hooks.state:
        payload["hooks"] = hooks.state()
    if hasattr(hooks.after_step, "state"):
        payload["after_step"] = hooks.after_step.state()
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: an interruption never leaves a half-written checkpoint
