"""What every method returns, and the steps every method shares."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..data.batches import SeqData
from ..data.split import UserGroups
from ..diagnostics import ConflictProbe
from ..evaluate import evaluate, per_user_metric, rank_targets
from ..models import BACKBONES, SequentialRecommender, make_backbone
from ..stats import N_BOOT, ci95, interval_verdict, paired_verdict, percent, verdict_interval
from ..results import MethodResult  # noqa: F401  (re-exported: methods import it from here)
from ..train import seed_everything


def seeded_backbone(cfg, data: SeqData, seed: int) -> SequentialRecommender:
    """``cfg.backbone`` with ``cfg.backbone_kwargs``, built right after seeding: every method
    that does this first starts from the baseline's initial weights for the same seed."""
    seed_everything(seed)
    return make_backbone(cfg.backbone, data.n_items, **{"max_len": data.max_len, **cfg.backbone_kwargs})


def conflict_probe(cfg, data: SeqData, groups: UserGroups | dict, seed: int) -> ConflictProbe | None:
    """The head-vs-tail gradient probe a config asks for (``cfg.conflict_every`` steps apart,
    ``cfg.conflict_batch`` windows per group), or ``None`` when it asks for none."""
    if not cfg.conflict_every:
        return None
    return ConflictProbe(data, groups["head"], groups["tail"], every=cfg.conflict_every,
                         batch=cfg.conflict_batch, seed=seed)


def evaluate_both(model: torch.nn.Module, data: SeqData, groups: UserGroups | dict,
                  variant: str, seed: int) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Full-ranking metrics on validation and test for every group, labelled by variant/seed."""
    masks = groups.masks if isinstance(groups, UserGroups) else groups
    frames, ranks = [], {}
    for split in ("valid", "test"):
        ranks[split] = rank_targets(model, data, split)
        frames.append(evaluate(model, data, split, masks, ranks=ranks[split]))
    metrics = pd.concat(frames, ignore_index=True).assign(variant=variant, seed=seed)
    return metrics, ranks


def backbone_name(model: torch.nn.Module) -> str:
    """The backbone key ("sasrec", "gru4rec") of a model, looking through wrappers that keep
    their backbone in a ``backbone`` attribute."""
    while isinstance(getattr(model, "backbone", None), torch.nn.Module):
        model = model.backbone
    for key, (cls, _) in BACKBONES.items():
        if isinstance(model, cls):
            return key
    return type(model).__name__.lower()


def combine_results(results: list[MethodResult]) -> pd.DataFrame:
    """All metrics of several runs in one tidy frame, with ``method`` (the run's, e.g.
    ``"baseline"`` for the base model inside a method notebook) and ``backbone`` columns."""
    return pd.concat([r.metrics.assign(method=r.method, backbone=backbone_name(r.model)) for r in results],
                     ignore_index=True)


def histories(results: list[MethodResult]) -> pd.DataFrame:
    """Training curves of several runs in one frame (``variant`` and ``seed`` columns)."""
    return pd.concat([r.history.assign(variant=r.variant, seed=r.seed) for r in results],
                     ignore_index=True)


def diagnostics(results: list[MethodResult], key: str) -> pd.DataFrame:
    """One diagnostic frame (e.g. ``"conflict"``) of every run that has it, with ``variant``
    and ``seed`` columns; an error names the keys that exist when none has it."""
    frames = [r.diagnostics[key].assign(variant=r.variant, seed=r.seed)
              for r in results if key in r.diagnostics]
    if not frames:
        have = sorted({k for r in results for k in r.diagnostics})
        raise KeyError(f"no run recorded diagnostic {key!r}; available: {have or 'none'}")
    return pd.concat(frames, ignore_index=True)


def summarize(metrics: pd.DataFrame, split: str = "test", ks=(10,), metrics_=("ndcg", "hr")) -> pd.DataFrame:
    """Mean over seeds with a 95% t-interval half-width (``stats.t_interval``), per variant x
    group x metric@k; ``seed_values`` keeps the per-seed values in seed order and ``seeds`` the
    seeds (what the group bars draw as points)."""
    m = metrics[(metrics["split"] == split) & metrics["k"].isin(ks) & metrics["metric"].isin(metrics_)]
    if "seed" in m:
        m = m.sort_values("seed", kind="stable")   # stable: variants keep their first-seen order
    keys = ["variant", "group", "metric", "k"]
    out = m.groupby(keys, sort=False)["value"].agg(["mean", "std", "count", ci95, tuple]).reset_index()
    out = out.rename(columns={"count": "n_seeds", "tuple": "seed_values"})
    if "seed" in m:
        out["seeds"] = m.groupby(keys, sort=False)["seed"].agg(tuple).to_numpy()
    return out


def summary_row(table: pd.DataFrame, variant: str, group: str, metric: str = "ndcg", k: int = 10) -> pd.Series | None:
    """The row of ``summarize`` output for one variant, group and metric@k (None when absent)."""
    rows = table[(table["variant"] == variant) & (table["group"] == group) &
                 (table["metric"] == metric) & (table["k"] == k)]
    return None if rows.empty else rows.iloc[0]


def gap_sentence(table: pd.DataFrame, variant: str, metric: str = "ndcg", k: int = 10) -> str:
    """One sentence on how far tail (and cold-start) users trail head users under ``variant``."""
    def value(group):
        row = summary_row(table, variant, group, metric, k)
        return float("nan") if row is None else float(row["mean"])
    head, tail, cold = value("head"), value("tail"), value("cold")
    label = f"{metric.upper()}@{k}"
    out = f"{variant}: head {label} {head:.4f}, tail {tail:.4f}"
    if head > 0:
        out += f" (tail/head = {tail / head:.2f})"
    if not np.isnan(cold):
        out += f", cold-start {cold:.4f}"
    return out + "."


def relative_change(a: float, b: float) -> str:
    """``a`` against ``b`` in percent, with enough digits that a non-zero change never reads
    as 0.0% (``+1.3%``, ``-0.004%``)."""
    return percent((a - b) / b)


COMPARE_COLUMNS = ("variant", "baseline", "group", "metric", "k", "a", "b", "diff", "lo", "hi",
                   "rel", "n_users", "n_seeds", "seeds", "seed_diffs", "seed_lo", "seed_hi", "seed_ci95",
                   "verdict")


def user_values(result: MethodResult, metric: str = "ndcg", k: int = 10, split: str = "test",
                data: SeqData | None = None) -> np.ndarray:
    """(U,) per-user ``metric@k`` of one run on ``split``, from its kept target ranks.

    A run loaded from an old cache may have no per-user ranks: with ``data`` they are recomputed
    from the run's model (and kept on the result); without, a ValueError says so."""
    ranks = getattr(result, "ranks", None) or {}
    if split not in ranks:
        if data is None:
            raise ValueError(f"run {result.variant!r} (seed {result.seed}) has no per-user {split} ranks "
                             "(a result cached before ranks were kept): pass data=... to recompute them "
                             "from its model, or re-run it with cache_runs False.")
        ranks = {**ranks, split: rank_targets(result.model, data, split)}
        result.ranks = ranks
    return per_user_metric(ranks[split], metric, k)


def compare(results: list[MethodResult], variant: str, baseline: str, groups: UserGroups | dict,
            metric: str = "ndcg", k: int = 10, split: str = "test", data: SeqData | None = None,
            n_boot: int = N_BOOT, seed: int = 0) -> pd.DataFrame:
    """``variant`` minus ``baseline`` on the same users, per group, over users and seeds.

    Protocol: the two are paired by seed (the seeds both ran; at least one) and by user. The
    verdict follows ``stats.paired_verdict``: a 95% paired bootstrap over users of the per-user
    ``metric@k`` averaged over those seeds (``n_boot`` resamples, seeded by ``seed``), and the
    95% t-interval of the per-seed mean differences; positive or negative transfer only when
    both exclude zero on that side (one seed: the users' interval alone, and every sentence
    says seed noise was not measured).

    Returns one row per group (``COMPARE_COLUMNS``): a and b (means), diff = a - b, lo..hi (the
    interval over users), rel = diff / b, n_users, n_seeds, seeds (tuple), seed_diffs (tuple of
    the per-seed differences), seed_lo..seed_hi (the interval over seeds, NaN for one seed),
    seed_ci95 (its half-width) and ``verdict`` ("positive" | "negative" | "none").
    :func:`verdict_sentence` turns a row into the sentence every report prints.
    """
    masks = groups.masks if isinstance(groups, UserGroups) else groups
    runs = {name: {r.seed: r for r in results if r.variant == name} for name in (variant, baseline)}
    for name, by_seed in runs.items():
        if not by_seed:
            have = sorted({r.variant for r in results})
            raise ValueError(f"no run of variant {name!r} to compare; variants: {have}")
    seeds = sorted(set(runs[variant]) & set(runs[baseline]))
    if not seeds:
        raise ValueError(f"{variant!r} (seeds {sorted(runs[variant])}) and {baseline!r} (seeds "
                         f"{sorted(runs[baseline])}) share no seed to pair")
    a = np.stack([user_values(runs[variant][s], metric, k, split, data) for s in seeds])    # (S, U)
    b = np.stack([user_values(runs[baseline][s], metric, k, split, data) for s in seeds])   # (S, U)
    rows = []
    for g, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != a.shape[1:]:
            raise ValueError(f"group {g!r} mask has shape {mask.shape}, the runs rank {a.shape[1]} users")
        v = paired_verdict(a[:, mask], b[:, mask], n_boot=n_boot, seed=seed)
        am, bm = (float(a[:, mask].mean()), float(b[:, mask].mean())) if mask.any() else (np.nan, np.nan)
        rows.append((variant, baseline, g, metric, k, am, bm, v["diff"], v["lo"], v["hi"],
                     v["diff"] / bm if bm else np.nan, int(mask.sum()), len(seeds), tuple(seeds),
                     v["seed_diffs"], v["seed_lo"], v["seed_hi"], (v["seed_hi"] - v["seed_lo"]) / 2,
                     v["verdict"]))
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


ONE_SEED = "one seed: seed noise not measured"


def seeds_label(seeds) -> str:
    """``(0, 1, 2)`` -> "seeds 0-2"; non-consecutive seeds are listed ("seeds 0, 3")."""
    seeds = [int(s) for s in seeds]
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def verdict_sentence(row) -> str:
    """The one sentence every verdict in the workbench prints (notebooks, leaderboard, index).

    ``row`` is a mapping with variant, baseline, group, metric, k, a, b (the two means), diff,
    lo and hi (its 95% interval over users; NaN when there is none), as in :func:`compare`
    output, and optionally n_users (0: says so), n_seeds, seeds, seed_diffs and seed_lo /
    seed_hi (the 95% interval over seeds). Positive or negative transfer is named only when both
    intervals exclude zero (``stats.paired_verdict``); otherwise it says "no detectable
    difference (+-x)" with x the half-width of their union. With several seeds the sentence
    lists the per-seed differences; with one it says "one seed: seed noise not measured".
    """
    method, base, group = row["variant"], row["baseline"], row["group"]
    metric, k, a, b = row["metric"], int(row["k"]), float(row["a"]), float(row["b"])
    lo, hi = float(row["lo"]), float(row["hi"])
    if row.get("n_users", 1) == 0:
        return f"{method} vs {base}: no {group} users to compare on."
    rel = f" ({relative_change(a, b)})" if b else ""
    numbers = f"{metric.upper()}@{k} {a:.4f} vs {b:.4f}{rel}"
    n_seeds = int(row.get("n_seeds", 1) or 1)
    seed_lo, seed_hi = float(row.get("seed_lo", np.nan)), float(row.get("seed_hi", np.nan))
    seeded = n_seeds > 1 and np.isfinite(seed_lo) and np.isfinite(seed_hi)
    one = f" ({ONE_SEED})" if n_seeds == 1 else ""
    if np.isnan(lo) or np.isnan(hi):
        return (f"{method} vs {base} for {group} users: {numbers}; no interval (one run each and no "
                f"per-user ranks), so no verdict{one}.")
    diffs = row.get("seed_diffs")
    per_seed = ""
    if n_seeds > 1 and diffs is not None and len(diffs) == n_seeds:
        names = row.get("seeds")
        names = range(n_seeds) if names is None or len(names) != n_seeds else names   # a tuple, list or array
        per_seed = f"; per seed {', '.join(f'{d:+.3f}' for d in diffs)} over {seeds_label(names)}"
    if lo == hi == 0 and (not seeded or seed_lo == seed_hi == 0):
        return f"{method} vs {base} for {group} users: {numbers} -- the same result for every user{one}."
    over_seeds = f", over seeds [{seed_lo:+.4f}, {seed_hi:+.4f}]" if seeded else ""
    interval = f"difference {a - b:+.4f}, 95% CI over {row.get('over', 'users')} [{lo:+.4f}, {hi:+.4f}]{over_seeds}"
    verdict = row.get("verdict") or interval_verdict(lo, hi, seed_lo, seed_hi)
    if verdict == "positive":
        return f"{method} beats {base} for {group} users: {numbers}, {interval}{per_seed} -- positive transfer{one}."
    if verdict == "negative":
        return (f"{method} does NOT beat {base} for {group} users: {numbers}, {interval}{per_seed} -- "
                f"negative transfer{one}.")
    v_lo, v_hi = verdict_interval(lo, hi, seed_lo, seed_hi)
    why = ""
    if seeded and (lo > 0 or hi < 0):
        why = (f"; over users [{lo:+.4f}, {hi:+.4f}] excludes zero, over seeds [{seed_lo:+.4f}, "
               f"{seed_hi:+.4f}] does not: seed noise")
    return (f"{method} vs {base} for {group} users: {numbers} -- no detectable difference "
            f"(\u00b1{(v_hi - v_lo) / 2:.4f}{why}){per_seed}{one}.")


def difference_row(table: pd.DataFrame, method: str, baseline: str, group: str = "tail",
                   metric: str = "ndcg", k: int = 10) -> dict | None:
    """``method`` minus ``baseline`` for one group as a :func:`verdict_sentence` row, from either
    a :func:`compare` table (the paired bootstrap over users) or a :func:`summarize` table (no
    per-user values: the interval is ``diff +- sqrt(ci_a**2 + ci_b**2)`` from the seed
    t-intervals, none with one seed; ``over`` = "seeds" says so). None when either is missing."""
    if "lo" in table.columns:
        rows = table[(table["variant"] == method) & (table["baseline"] == baseline) & (table["group"] == group)
                     & (table["metric"] == metric) & (table["k"] == k)]
        return None if rows.empty else rows.iloc[0].to_dict()
    a, b = summary_row(table, method, group, metric, k), summary_row(table, baseline, group, metric, k)
    if a is None or b is None:
        return None
    diff = float(a["mean"]) - float(b["mean"])
    half = float(np.hypot(a["ci95"], b["ci95"]))
    return {"variant": method, "baseline": baseline, "group": group, "metric": metric, "k": k,
            "a": float(a["mean"]), "b": float(b["mean"]), "diff": diff, "lo": diff - half, "hi": diff + half,
            "n_seeds": int(min(a["n_seeds"], b["n_seeds"])), "over": "seeds"}


def transfer_verdict(table: pd.DataFrame, method: str, baseline: str, group: str = "tail",
                     metric: str = "ndcg", k: int = 10) -> str:
    """One sentence: did ``method`` beat ``baseline`` for ``group``? (:func:`verdict_sentence`
    on :func:`difference_row`; pass a :func:`compare` table for the paired bootstrap.)"""
    row = difference_row(table, method, baseline, group, metric, k)
    if row is None:
        return f"{method} or {baseline} has no {group} {metric}@{k} to compare."
    return verdict_sentence(row)


def setting_summary(comparisons: pd.DataFrame, label: str, baseline: str, group: str = "all",
                    metric: str = "ndcg", k: int = 10) -> str:
    """One sentence for a setting of a cross-domain notebook: the best model by mean, then every
    variant compared with ``baseline`` in ``comparisons`` (a :func:`compare` table) sorted by what
    its ``verdict`` says (``stats.paired_verdict``: the 95% intervals over users and, with
    several seeds, over seeds must both exclude zero): negative transfer, positive transfer or no
    detectable difference. A mean below the baseline inside the noise is never called negative
    transfer; a one-seed table says that seed noise was not measured."""
    rows = comparisons[(comparisons["baseline"] == baseline) & (comparisons["group"] == group)
                       & (comparisons["metric"] == metric) & (comparisons["k"] == k)]
    label_ = f"{metric.upper()}@{k}"
    if rows.empty:
        return f"{label}: no {group} {label_} comparison with {baseline}."
    short = lambda v: v.split(" | ", 1)[-1]                              # noqa: E731
    means = {**{r["variant"]: float(r["a"]) for _, r in rows.iterrows()}, baseline: float(rows["b"].iloc[0])}
    best = max(means, key=means.get)
    verdicts = rows["verdict"] if "verdict" in rows else rows.apply(
        lambda r: interval_verdict(r["lo"], r["hi"], r.get("seed_lo", np.nan), r.get("seed_hi", np.nan)), axis=1)
    kinds = {"negative transfer": rows[verdicts == "negative"], "positive transfer": rows[verdicts == "positive"],
             "no detectable difference": rows[verdicts == "none"]}
    parts = [f"{kind} for {', '.join(short(v) for v in part['variant'])}" for kind, part in kinds.items()
             if not part.empty]
    one_seed = int(rows["n_seeds"].min()) == 1 if "n_seeds" in rows else True
    over = f"95% interval over users ({ONE_SEED})" if one_seed else "95% intervals over users and seeds"
    return (f"{label}: best {short(best)} ({group} {label_} {means[best]:.4f}); against {short(baseline)} "
            f"({means[baseline]:.4f}), {over}: " + "; ".join(parts) + ".")


def stopped_by_cap(result: MethodResult) -> list[str]:
    """The stopping reasons of ``result``'s training stages that were a cap (epochs, max_steps,
    max_minutes) rather than early stopping on validation; empty when every stage converged."""
    stages = result.diagnostics.get("stages")
    if stages is not None and "stopped" in stages:
        reasons = list(stages["stopped"])
    elif result.train is not None:
        reasons = [result.train.stopped]
    else:
        reasons = []
    return [r for r in reasons if not str(r).startswith("early stop")]


def still_improving(results: list[MethodResult]) -> list[str]:
    """Variants with a training stage ended by a cap (epochs, steps or minutes) rather than by
    early stopping: such a model may still have been getting better."""
    return list(dict.fromkeys(r.variant for r in results if stopped_by_cap(r)))


def convergence_sentence(results: list[MethodResult]) -> str:
    """One sentence on whether the compared models were trained to convergence (early stopping)
    or cut off by a cap, in which case a comparison partly measures how fast each variant learns
    rather than where it ends up."""
    capped = still_improving(results)
    if not capped:
        return "Every model stopped early on validation NDCG@10: the comparison is between converged models."
    n = len({r.variant for r in results})
    share = ("The model was" if n == 1 else f"All {n} models were" if len(capped) == n
             else f"{len(capped)} of {n} models were")
    reasons = sorted({why for r in results for why in stopped_by_cap(r)})
    return (f"{share} stopped by a cap ({'; '.join(reasons)}), not by early stopping: "
            f"{', '.join(capped)}. Where a capped model is compared, the comparison is between models that may "
            "still have been improving and partly measures how fast each variant learns.")


def tuning_table(results: list[MethodResult]) -> pd.DataFrame:
    """Every arm's learning-rate search (``Experiment.run``): variant, lr, validation NDCG@10,
    which value was chosen, the training seconds and how far each point trained (``search``:
    ``"grid"``, to early stopping, or ``"rung of k"``, successive halving's k validations past
    the warm-up, on which it was chosen), one row per grid point; arms run without a search
    show their lr."""
    frames = []
    for r in results:
        if r.seed != min(x.seed for x in results if x.variant == r.variant):
            continue
        t = getattr(r, "tuning", None)
        if t is None:
            t = pd.DataFrame({"variant": [r.variant], "lr": [getattr(r, "lr", None)],
                              "valid_ndcg10": [r.ndcg10("all", "valid")], "chosen": [True],
                              "seconds": [r.train.seconds if r.train is not None else float("nan")],
                              "search": "one rate"})
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["variant", "lr", "valid_ndcg10", "chosen", "seconds", "search"])


def tuning_note(results: list[MethodResult]) -> str:
    """One sentence on the learning-rate searches of ``results``: how many arms chose an end of
    their grid. An arm whose chosen rate is its grid's largest (or smallest) may do better
    outside the grid, so its search only bounds it from one side; the sentence names them."""
    t = tuning_table(results)
    searched = t.groupby("variant").filter(lambda g: len(g) > 1)
    if searched.empty:
        return "No arm searched a grid of learning rates (each trained at one rate)."
    ends = {"largest": [], "smallest": []}
    arms = list(dict.fromkeys(searched["variant"]))
    for variant in arms:
        g = searched[searched["variant"] == variant]
        lr = float(g.loc[g["chosen"], "lr"].iloc[0])
        if lr == g["lr"].max():
            ends["largest"].append(f"{variant} ({lr:g})")
        elif lr == g["lr"].min():
            ends["smallest"].append(f"{variant} ({lr:g})")
    if not any(ends.values()):
        return f"Every one of the {len(arms)} searched arms chose a rate inside its grid."
    parts = [f"{len(v)} its {side}: {', '.join(v)}" for side, v in ends.items() if v]
    return (f"Of {len(arms)} searched arms, " + "; ".join(parts) + ". The best rate of an arm at an end "
            "of its grid may lie beyond it: its search bounds it from one side only.")


def run_facts(results: list[MethodResult]) -> dict:
    """Per variant, what a record should keep of how it was trained: the chosen learning rate,
    why each seed's training stopped (early stopping or a cap) and, for runs of
    ``Experiment.run``, where each seed ran (``"local"`` or the Ray node id); JSON-able."""
    out: dict[str, dict] = {}
    for r in results:
        facts = out.setdefault(r.variant, {"lr": getattr(r, "lr", None), "stopped": {}})
        reasons = stopped_by_cap(r)
        facts["stopped"][str(r.seed)] = "; ".join(reasons) if reasons else "early stop"
        where = getattr(r, "ran_on", None)
        if where:
            facts.setdefault("ran_on", {})[str(r.seed)] = where["node"]
    return out


def compare_pairs(results: list[MethodResult], pairs, groups: UserGroups | dict,
                  metrics=("ndcg", "hr"), **kw) -> pd.DataFrame:
    """:func:`compare` for every ``(variant, baseline)`` in ``pairs`` and every metric, in one
    table (what a notebook records for the index's change table); a repeated pair is done once."""
    pairs = list(dict.fromkeys(tuple(p) for p in pairs))
    return pd.concat([compare(results, v, b, groups, metric=m, **kw) for m in metrics for v, b in pairs],
                     ignore_index=True)


def null_check_sentence(comparisons: pd.DataFrame, variant: str, baseline: str,
                        metric: str = "ndcg", k: int = 10) -> str:
    """A variant that should equal its baseline (a method reduced to plain training): the check
    holds when no group's 95% interval excludes zero; otherwise it names the groups where the
    two differ, which must be explained before any verdict of the method is trusted."""
    rows = comparisons[(comparisons["variant"] == variant) & (comparisons["baseline"] == baseline)
                       & (comparisons["metric"] == metric) & (comparisons["k"] == k)]
    if rows.empty:
        return f"Null check: no {metric}@{k} comparison of {variant} with {baseline}."
    label = f"{rows['metric'].iloc[0].upper()}@{int(rows['k'].iloc[0])}"
    spans = ", ".join(f"{g} {d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
                      for g, d, lo, hi in rows[["group", "diff", "lo", "hi"]].itertuples(index=False))
    off = rows.loc[rows["verdict"] != "none", "group"].tolist()
    if not off:
        return (f"Null check holds: {variant} matches {baseline} within the 95% interval for every group "
                f"({label} difference, interval: {spans}).")
    return (f"Null check FAILS: {variant} differs from {baseline} for {', '.join(off)} users ({label} "
            f"difference, interval: {spans}); find out why (stopping, batch composition, a bug) before "
            "trusting the verdicts below.")


def timings(results: list[MethodResult]) -> pd.DataFrame:
    """Training seconds, steps and why training stopped, of every run (its seed in the
    ``seed`` column), and a row per learning rate its search tried and did not keep (stage
    ``"lr search"``, from the run's ``tuning`` table)."""
    rows = []
    for r in results:
        stage = r.history["stage"].iloc[0] if "stage" in r.history and len(r.history) else "target-only"
        rows.append({"variant": r.variant, "seed": r.seed, "stage": stage,
                     "seconds": r.train.seconds if r.train else np.nan,
                     "steps": r.train.steps if r.train else np.nan,
                     "stopped": r.train.stopped if r.train else ""})
        t = getattr(r, "tuning", None)
        if t is not None and len(t) > 1 and "seconds" in t and r.seed == min(
                x.seed for x in results if x.variant == r.variant):
            rows += [{"variant": f"{r.variant} (lr {row.lr:g}, not kept)", "seed": r.seed, "stage": "lr search",
                      "seconds": row.seconds, "steps": np.nan, "stopped": ""}
                     for row in t.itertuples() if not row.chosen]
    return pd.DataFrame(rows, columns=["variant", "seed", "stage", "seconds", "steps", "stopped"])


def stage_times(results: list[MethodResult], preps: dict | None = None) -> pd.DataFrame:
    """Seconds per stage: data (and feature) preparation of every setting (``preps``: label ->
    anything with a ``seconds`` dict, e.g. :class:`~seqtransfer.experiment.Transfer`), then every training run
    of every seed and every learning rate its search tried (a shared pre-training counted once;
    a run loaded from the cache shows the seconds it took when it trained)."""
    rows = []
    for label, p in (preps or {}).items():
        rows += [{"variant": f"{label} | {stage}", "seed": np.nan, "stage": stage, "seconds": s, "steps": np.nan,
                  "stopped": ""} for stage, s in p.seconds.items()]
    seen = set()   # a run shared by settings (one pre-training) is one row, loaded twice or not
    unique = [r for r in results if not ((r.variant, r.seed) in seen or seen.add((r.variant, r.seed)))]
    return pd.concat([pd.DataFrame(rows), timings(unique)], ignore_index=True)
