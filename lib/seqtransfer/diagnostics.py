"""What notebooks visualise and tests check about training itself.

Gradient conflict: the cosine between the loss gradient of a batch of head users and that of
a batch of tail users, per layer (and over all parameters). A cosine near 1 means the two
groups pull the parameters the same way (transfer); near or below 0 means they interfere.
Gradients are taken with dropout off (``model.eval()``) so the cosine reflects the data, not
dropout noise, and through ``torch.autograd.grad``, leaving the optimizer's ``.grad`` untouched.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch

from .data.batches import SeqData


def layer_of(param_name: str) -> str:
    """Group parameters by module: ``blocks.0.attn.qkv.weight`` -> ``blocks.0``,
    ``item_emb.weight`` -> ``item_emb``, ``gru.weight_ih_l0`` -> ``gru``."""
    parts = param_name.split(".")
    for i, p in enumerate(parts[:-1]):
        if re.fullmatch(r"\d+", p):
            return ".".join(parts[:i + 1])
    return parts[0] if len(parts) > 1 else param_name


def layer_names(model: torch.nn.Module) -> list[str]:
    seen: dict[str, None] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            seen[layer_of(n)] = None
    return list(seen)


def batch_gradient(model: torch.nn.Module, data: SeqData, windows: torch.Tensor,
                   loss_fn=None) -> dict[str, torch.Tensor]:
    """Flattened loss gradient per layer for the given training windows (dropout off)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    loss_fn = loss_fn or (lambda m, x, y, u: m.loss(x, y, u))
    loss = loss_fn(model, *data.window_batch(windows))
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    model.train(was_training)
    out: dict[str, list[torch.Tensor]] = {}
    for (n, p), g in zip(params, grads):
        out.setdefault(layer_of(n), []).append((torch.zeros_like(p) if g is None else g).reshape(-1))
    return {k: torch.cat(v) for k, v in out.items()}


def cosine_by_layer(ga: dict[str, torch.Tensor], gb: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer cosine of two gradients, plus ``"all"`` over every parameter."""
    out = {k: float(torch.nn.functional.cosine_similarity(ga[k], gb[k], dim=0)) for k in ga}
    out["all"] = float(torch.nn.functional.cosine_similarity(
        torch.cat(list(ga.values())), torch.cat(list(gb.values())), dim=0))
    return out


def gradient_conflict(model: torch.nn.Module, data: SeqData, windows_a: torch.Tensor,
                      windows_b: torch.Tensor) -> dict[str, float]:
    """Cosine per layer between the gradients of two window batches."""
    return cosine_by_layer(batch_gradient(model, data, windows_a), batch_gradient(model, data, windows_b))


class ConflictProbe:
    """A training hook: every ``every`` steps, draw a head batch and a tail batch of windows
    and record the per-layer gradient cosine between them. Use as ``Hooks.after_step``."""

    def __init__(self, data: SeqData, head_mask: np.ndarray, tail_mask: np.ndarray,
                 every: int = 10, batch: int = 64, seed: int = 0):
        self.head = data.windows_of(head_mask).cpu()
        self.tail = data.windows_of(tail_mask).cpu()
        if len(self.head) == 0 or len(self.tail) == 0:
            raise ValueError("gradient-conflict probe needs training windows of both head and tail users")
        self.every, self.batch = every, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.rows: list[dict] = []

    def _draw(self, pool: torch.Tensor, device) -> torch.Tensor:
        pick = torch.randint(0, len(pool), (min(self.batch, len(pool)),), generator=self.gen)
        return pool[pick].to(device)

    def __call__(self, ctx) -> None:
        if ctx.step % self.every:
            return
        dev = ctx.data.device
        cos = gradient_conflict(ctx.model, ctx.data, self._draw(self.head, dev), self._draw(self.tail, dev))
        self.rows += [{"step": ctx.step, "epoch": ctx.epoch, "layer": k, "cosine": v} for k, v in cos.items()]

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["step", "epoch", "layer", "cosine"])

    # ``train.fit`` checkpoints an ``after_step`` hook that has these two, so a run resumed from
    # its checkpoint (a halving rung's winner, a killed run) keeps the rows of its first steps
    # and draws the probe batches an uninterrupted run would
    def state(self) -> dict:
        return {"rows": list(self.rows), "gen": self.gen.get_state()}

    def load_state(self, saved: dict) -> None:
        self.rows = list(saved["rows"])
        self.gen.set_state(saved["gen"].cpu())


# Per-stratum gradients: the view behind backdoor-adjusted Gradient Aggregation (Lv et al.,
# arXiv 2208.09130; methods.intervened). Users are stratified by activeness; the plain mean
# over all training positions equals sum_z s(z) g_z, with s(z) stratum z's share of positions
# and g_z its mean gradient, while the adjusted gradient is sum_z P(z) g_z.

def stratum_gradient_vectors(model: torch.nn.Module, data: SeqData, window_strata,
                             batch: int = 256, seed: int = 0) -> dict[int, torch.Tensor]:
    """Stratum -> flattened mean-loss gradient over up to ``batch`` of its windows.

    ``window_strata`` is the (N,) stratum of every training window. Windows are drawn without
    replacement by a seeded generator; strata without windows are left out. Routed models
    ``model`` and ``data`` must share a device.
    """
    ws = torch.as_tensor(window_strata).cpu()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for z in torch.unique(ws).tolist():
        pool = torch.nonzero(ws == z).squeeze(1)
        pick = pool[torch.randperm(len(pool), generator=gen)[:batch]].to(data.device)
        out[int(z)] = torch.cat(list(batch_gradient(model, data, pick).values()))
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def stratum_gradients(model: torch.nn.Module, data: SeqData, window_strata, prior,
                      batch: int = 256, seed: int = 0) -> pd.DataFrame:
    """Each stratum's mean gradient against the plain-mean and the backdoor-adjusted gradient.

    Args:
        window_strata: (N,) stratum of every training window.
        prior: (Z,) P(z); renormalised over the strata that have windows.
        batch: windows sampled per stratum (one backward pass each).

    The two aggregates are built from the same per-stratum gradients: "plain" weights stratum
    z by its share of all training positions (what the plain mean does in expectation),
    "adjusted" by P(z). Returns one row per stratum and one per aggregate: gradient (name),
    stratum, windows, weight_plain, weight_adjusted, norm, cos_plain, cos_adjusted.
    """
    vecs = stratum_gradient_vectors(model, data, window_strata, batch, seed)
    zs = sorted(vecs)
    ws = torch.as_tensor(window_strata).cpu()
    positions = (data.train_targets > 0).sum(1).cpu().double()               # (N,)
    share = np.array([float(positions[ws == z].sum()) for z in zs])
    share = share / share.sum()
    p = np.asarray(prior, dtype=float)[zs]
    p = p / p.sum()
    plain = sum(float(w) * vecs[z] for w, z in zip(share, zs))
    adjusted = sum(float(w) * vecs[z] for w, z in zip(p, zs))
    rows = [{"gradient": f"stratum {z}", "stratum": z, "windows": min(batch, int((ws == z).sum())),
             "weight_plain": s, "weight_adjusted": a, "norm": float(vecs[z].norm()),
             "cos_plain": _cos(vecs[z], plain), "cos_adjusted": _cos(vecs[z], adjusted)}
            for z, s, a in zip(zs, share, p)]
    n = sum(r["windows"] for r in rows)
    cross = _cos(plain, adjusted)
    rows.append({"gradient": "plain", "stratum": np.nan, "windows": n, "weight_plain": 1.0,
                 "weight_adjusted": np.nan, "norm": float(plain.norm()), "cos_plain": 1.0,
                 "cos_adjusted": cross})
    rows.append({"gradient": "adjusted", "stratum": np.nan, "windows": n, "weight_plain": np.nan,
                 "weight_adjusted": 1.0, "norm": float(adjusted.norm()), "cos_plain": cross,
                 "cos_adjusted": 1.0})
    return pd.DataFrame(rows)


# Sequence representations: what an activeness discriminator (methods.gradient_alignment)
# tries to read, and what a 2-D projection shows of head and tail users.

@torch.no_grad()
def representations(model: torch.nn.Module, data: SeqData, split: str = "test",
                    batch_size: int = 1024) -> torch.Tensor:
    """(U, D) representation of every user's evaluation history for ``split`` (the vector the
    model scores at evaluation), in eval mode, batched on the model's device, returned on CPU."""
    if split not in data.eval_inputs:
        raise ValueError(f"split must be one of {sorted(data.eval_inputs)}, got {split!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, data.n_users, batch_size):
        stop = min(start + batch_size, data.n_users)
        seq = data.eval_inputs[split][start:stop].to(device)                # (B, L)
        lengths = data.eval_lengths[split][start:stop].to(device)           # (B,)
        h = model.represent(seq, lengths, torch.arange(start, stop, device=device))  # (B, D)
        out.append(h.float().cpu())
    model.train(was_training)
    return torch.cat(out)


def pca_2d(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """(U, D) array or tensor -> (U, 2) coordinates on the first two principal components
    (centred; each axis's sign fixed so its largest loading is positive, for reproducible
    plots; with D < 2 the second coordinate is zero)."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pca_2d expects a (U, D) array, got shape {x.shape}")
    x = x.astype(np.float64)
    xc = x - x.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)                       # (r, D) components
    comps = vt[:2]
    comps = comps * np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])[:, None]
    out = np.zeros((len(x), 2))
    out[:, :len(comps)] = xc @ comps.T
    return out


def activeness_probe(reps: np.ndarray | torch.Tensor, head_mask: np.ndarray, test_frac: float = 0.3,
                     l2: float = 1e-2, seed: int = 0, max_iter: int = 100) -> float:
    """How much activeness signal frozen representations carry: the balanced accuracy, on
    held-out users, of a linear probe predicting head vs tail.

    A post-hoc measure that applies to every model alike, unlike the accuracy of a method's own
    discriminator (which is measured on training batches and depends on how hard that
    discriminator was trained). Users are split per class with ``default_rng(seed)``: a
    ``test_frac`` share of head and of tail users is held out. Features are standardised with
    the training users' mean and std; a logistic regression with class-balanced loss and an L2
    penalty ``l2 * ||w||^2 / 2`` (bias unpenalised) is fit by L-BFGS in float64.

    Args:
        reps: (U, D) representations (e.g. :func:`representations`).
        head_mask: (U,) True for head users; every other user counts as tail.

    Returns:
        Mean of the head and tail recalls on the held-out users (chance = 0.5).
    """
    x = reps.detach().cpu().numpy() if isinstance(reps, torch.Tensor) else np.asarray(reps)
    y = np.asarray(head_mask, dtype=bool)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"activeness_probe expects (U, D) reps and (U,) head_mask, got {x.shape} and {y.shape}")
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in (False, True):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) < 2:
            raise ValueError(f"activeness_probe needs at least 2 {'head' if c else 'tail'} users, got {len(idx)}")
        test[idx[:min(len(idx) - 1, max(1, round(test_frac * len(idx))))]] = True
    x = x.astype(np.float64)
    mean, std = x[~test].mean(0), x[~test].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    xt, yt = torch.as_tensor(x[~test]), torch.as_tensor(y[~test], dtype=torch.float64)
    pos = float(yt.mean())
    weight = torch.where(yt > 0, 0.5 / pos, 0.5 / (1 - pos))                  # (n,) class-balanced
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, weight=weight)
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (torch.as_tensor(x[test]) @ w + b > 0).numpy()
    truth = y[test]
    return float(np.mean([(pred[truth == c] == c).mean() for c in (False, True)]))


# ---------------------------------------------------------------------------------------------
# VQ codebook views (MetaRec): which codes each domain's items use, how evenly, how the domains
# meet in the shared code space, and whether the same film in two datasets lands on one code.
# Input: a "codes" frame with columns step, domain, item, code (and x, y from
# :func:`codebook_projection`); rows of domain ``CODEBOOK`` are the codes themselves.

CODEBOOK = "codebook"


def codebook_projection(codebook: np.ndarray | torch.Tensor, items: dict[str, np.ndarray | torch.Tensor],
                        codes: dict[str, np.ndarray | torch.Tensor]) -> pd.DataFrame:
    """The codebook (K, D) and every domain's item vectors (N_d, D) on the first two principal
    components of all of them together (:func:`pca_2d`). Returns domain, item, code, x, y; the
    codes are rows of domain ``"codebook"`` with item = code = their index; item ids are 1..N_d."""
    as_np = lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)  # noqa: E731
    cb = as_np(codebook)
    if cb.ndim != 2:
        raise ValueError(f"codebook must be (K, D), got shape {cb.shape}")
    if set(items) != set(codes):
        raise ValueError(f"items and codes must name the same domains, got {sorted(items)} and {sorted(codes)}")
    parts, rows = [cb], [pd.DataFrame({"domain": CODEBOOK, "item": np.arange(len(cb)), "code": np.arange(len(cb))})]
    for d, v in items.items():
        v, c = as_np(v), as_np(codes[d]).reshape(-1)
        if v.ndim != 2 or v.shape[1] != cb.shape[1] or len(v) != len(c):
            raise ValueError(f"domain {d!r}: items must be (N, {cb.shape[1]}) with N codes, got {v.shape} and {c.shape}")
        parts.append(v)
        rows.append(pd.DataFrame({"domain": d, "item": np.arange(1, len(v) + 1), "code": c}))
    xy = pca_2d(np.concatenate(parts))
    out = pd.concat(rows, ignore_index=True)
    out["x"], out["y"] = xy[:, 0], xy[:, 1]
    return out


def code_usage_over_training(codes: pd.DataFrame, n_codes: int) -> pd.DataFrame:
    """Per snapshot step and domain: items, codes used, their share of the codebook and the
    perplexity of the items' code frequencies (exp entropy: uniform use of m codes gives m)."""
    from .models.vq import code_usage, perplexity
    c = codes[codes["domain"] != CODEBOOK]
    rows = []
    for (step, d), part in c.groupby(["step", "domain"], sort=False):
        counts = code_usage(part["code"].to_numpy(), n_codes)
        rows.append({"step": step, "domain": d, "items": len(part), "codes_used": int((counts > 0).sum()),
                     "share_used": float((counts > 0).mean()), "perplexity": perplexity(counts)})
    return pd.DataFrame(rows, columns=["step", "domain", "items", "codes_used", "share_used", "perplexity"])


def code_sharing(codes: pd.DataFrame, step: int | None = None) -> pd.DataFrame:
    """At one snapshot (default: the last row's step): how many used codes are used by exactly
    1, 2, ... domains, their share of the used codes, and the share of items that sit on a code
    of several domains. One row per number of domains."""
    c = codes[codes["domain"] != CODEBOOK]
    if c.empty:
        raise ValueError("no item codes to compare: the frame holds no domain's items")
    step = c["step"].iloc[-1] if step is None else step
    c = c[c["step"] == step]
    per_code = c.groupby("code")["domain"].nunique()                              # code -> domains
    n_dom = c["domain"].nunique()
    items_on = c["code"].map(per_code)
    rows = [{"step": step, "domains": k, "codes": int((per_code == k).sum()),
             "share_of_used": float((per_code == k).mean()), "share_of_items": float((items_on == k).mean())}
            for k in range(1, n_dom + 1)]
    return pd.DataFrame(rows)


def title_code_agreement(source_titles: dict[str, pd.Series], source_codes: dict[str, np.ndarray],
                         target_titles: pd.Series, target_codes: np.ndarray) -> pd.DataFrame:
    """How often the same film (matched by normalised title, which the model never sees) gets the
    same code in the target as in its source domain. ``*_titles``: titles of items 1..N (index
    order = code order); ``*_codes``: (N,) codes. A title found in several source items counts as
    agreeing if any of them shares the code. ``chance``: the rate if target codes were drawn
    independently from their own frequencies: sum_k p_source(k) p_target(k) over matched films.
    One row: matched, same_code, rate (NaN when nothing matched), chance."""
    norm = lambda s: pd.Series(s).astype(str).str.lower().str.strip().to_numpy()  # noqa: E731
    src: dict[str, set] = {}
    for d, titles in source_titles.items():
        codes = np.asarray(source_codes[d]).reshape(-1)
        if len(codes) != len(titles):
            raise ValueError(f"domain {d!r} has {len(titles)} titles but {len(codes)} codes")
        for t, c in zip(norm(titles), codes):
            src.setdefault(t, set()).add(int(c))
    tcodes = np.asarray(target_codes).reshape(-1)
    if len(tcodes) != len(target_titles):
        raise ValueError(f"the target has {len(target_titles)} titles but {len(tcodes)} codes")
    pairs = [(src[t], int(c)) for t, c in zip(norm(target_titles), tcodes) if t in src]
    if not pairs:
        return pd.DataFrame([{"matched": 0, "same_code": 0, "rate": np.nan, "chance": np.nan}])
    same = sum(c in s for s, c in pairs)
    s_codes = np.array([min(s) for s, _ in pairs])
    t_codes = np.array([c for _, c in pairs])
    ps = pd.Series(s_codes).value_counts(normalize=True)
    pt = pd.Series(t_codes).value_counts(normalize=True)
    chance = float((ps * pt.reindex(ps.index, fill_value=0)).sum())
    return pd.DataFrame([{"matched": len(pairs), "same_code": int(same), "rate": same / len(pairs), "chance": chance}])


def source_weight_summary(weights: pd.DataFrame) -> pd.DataFrame:
    """Per variant (when given) and source, over the meta iterations it was sampled in: times
    sampled, mean weight, mean descent alignment, mean meta-gradient cosine with the target
    gradient, mean cosine with the other sources' meta-gradients and mean spread (max - min) of
    the iteration's weights (when recorded), and the weight at its first and last sampled
    iteration."""
    keys = [k for k in ("variant", "source") if k in weights.columns]
    g = weights.sort_values("step").groupby(keys, sort=False)
    out = {"sampled": g.size(), "mean_weight": g["weight"].mean(),
           "mean_alignment": g["alignment"].mean(), "mean_grad_cosine": g["grad_cosine"].mean()}
    if "pair_cosine" in weights:       # how alike the sources' meta-gradients are, and what the weights did
        out.update(mean_pair_cosine=g["pair_cosine"].mean(), mean_weight_spread=g["weight_spread"].mean())
    out.update(first_weight=g["weight"].first(), last_weight=g["weight"].last())
    return pd.DataFrame(out).reset_index()


# ECAT: sample selection and continual periods
# ---------------------------------------------------------------------------------------------

FUNNEL_STAGES = ("source samples", "graph candidates", "selected")


def selection_funnel(counts: pd.DataFrame) -> pd.DataFrame:
    """ECAT's per-period selection counts (``diagnostics["counts"]`` of its runs: variant, period,
    source samples, graph candidates, selected, target samples, auc) as a tidy frame: variant,
    period, stage, samples, share of the period's source samples, auc. A stage a run did not
    record (no source samples at all, e.g. target-only) is left out."""
    rows = []
    for r in counts.to_dict("records"):
        total = r.get("source samples")
        for stage in FUNNEL_STAGES:
            n = r.get(stage)
            if n is None or (isinstance(n, float) and np.isnan(n)):
                continue
            rows.append({"variant": r.get("variant", ""), "period": int(r["period"]), "stage": stage,
                         "samples": int(n), "share": n / total if total else np.nan,
                         "auc": r.get("auc", np.nan)})
    return pd.DataFrame(rows, columns=["variant", "period", "stage", "samples", "share", "auc"])


def period_table(periods: pd.DataFrame, split: str = "test", groups=("all", "head", "tail")) -> pd.DataFrame:
    """NDCG@10 after each period (``diagnostics["periods"]`` of ECAT runs), one row per variant
    and period, one column per group."""
    p = periods[(periods["split"] == split) & periods["group"].isin(groups)]
    return p.pivot_table(index=["variant", "period"], columns="group", values="ndcg10", sort=False)
