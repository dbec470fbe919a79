"""Plotly figure builders: data in, ``go.Figure`` out. Nothing below imports this module."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .data.split import lorenz

GROUP_COLORS = {"all": "#4C72B0", "head": "#DD8452", "tail": "#55A868", "cold": "#8172B3"}
NEGATIVE = "#C44E52"


def activeness_histogram(activeness: np.ndarray, head_threshold: float | None = None,
                         title: str = "User activeness") -> go.Figure:
    """Users per activeness value on log-log axes (logarithmic bins), head cut-off marked."""
    a = np.asarray(activeness)
    a = a[a > 0]
    edges = np.unique(np.logspace(0, np.log10(a.max() + 1), 40).round())
    counts, edges = np.histogram(a, bins=edges)
    centers = np.sqrt(edges[:-1] * edges[1:])
    keep = counts > 0
    fig = go.Figure(go.Scatter(x=centers[keep], y=counts[keep], mode="markers+lines",
                               marker=dict(color=GROUP_COLORS["all"]), name="users",
                               hovertemplate="activeness ~%{x:.0f}: %{y} users<extra></extra>"))
    if head_threshold is not None:
        fig.add_vline(x=max(head_threshold, 1), line_dash="dash", line_color=GROUP_COLORS["head"],
                      annotation_text=f"head: > {head_threshold:.0f}", annotation_position="top right")
    fig.update_xaxes(type="log", title="training interactions per user (log)")
    fig.update_yaxes(type="log", title="users (log)")
    return fig.update_layout(title=title, template="plotly_white", height=380)


def lorenz_curve(curves: dict[str, np.ndarray], head_frac: float | None = 0.2,
                 title: str = "Lorenz curve of activeness") -> go.Figure:
    """One Lorenz curve per named activeness array, Gini in the legend."""
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"),
                               name="equality"))
    for name, a in curves.items():
        x, y, gini = lorenz(a)
        step = max(1, len(x) // 2000)
        fig.add_scatter(x=x[::step], y=y[::step], mode="lines", name=f"{name} (Gini {gini:.3f})")
    if head_frac:
        fig.add_vline(x=1 - head_frac, line_dash="dash", line_color=GROUP_COLORS["head"],
                      annotation_text=f"top {head_frac:.0%} = head")
    fig.update_xaxes(title="cumulative share of users (least active first)", range=[0, 1])
    fig.update_yaxes(title="cumulative share of interactions", range=[0, 1])
    return fig.update_layout(title=title, template="plotly_white", height=420)


def group_bars(summary: pd.DataFrame, metric: str = "ndcg", k: int = 10,
               baseline: str | None = None, title: str | None = None) -> go.Figure:
    """Bars of mean metric per variant (x) and group (colour), 95% intervals when several seeds.

    ``summary`` is :func:`seqtransfer.methods.summarize` output. When ``baseline`` names a
    variant, bars below the baseline's value for the same group get a red outline: negative
    transfer shows in colour, not only in numbers.
    """
    s = summary[(summary["metric"] == metric) & (summary["k"] == k)]
    s = s[s["n_seeds"] > 0]
    fig = go.Figure()
    for group, part in s.groupby("group", sort=False):
        base = None
        if baseline is not None:
            b = s[(s["variant"] == baseline) & (s["group"] == group)]["mean"]
            base = float(b.iloc[0]) if len(b) else None
        worse = [base is not None and v != baseline and m < base for v, m in zip(part["variant"], part["mean"])]
        fig.add_bar(x=part["variant"], y=part["mean"], name=group,
                    marker=dict(color=GROUP_COLORS.get(group),
                                line=dict(color=[NEGATIVE if w else "rgba(0,0,0,0)" for w in worse], width=3)),
                    error_y=dict(type="data", array=part["ci95"].fillna(0)),
                    hovertemplate="%{x}<br>" + f"{group}: " + "%{y:.4f}<extra></extra>")
    label = f"{metric.upper()}@{k}"
    fig.update_layout(barmode="group", template="plotly_white", height=420,
                      title=title or f"Test {label} by user group (full ranking)", yaxis_title=label)
    return fig


def training_curves(history: pd.DataFrame, title: str = "Training curves") -> go.Figure:
    """Loss and validation NDCG@10 per epoch, one line per variant."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss", "validation NDCG@10"))
    h = history if "variant" in history else history.assign(variant="model")
    for i, (variant, part) in enumerate(h.groupby("variant", sort=False)):
        color = _palette(i)
        fig.add_scatter(x=part["epoch"] + 1, y=part["loss"], name=variant, legendgroup=variant,
                        line=dict(color=color), row=1, col=1)
        if "valid_ndcg10" in part:
            v = part.dropna(subset=["valid_ndcg10"])
            fig.add_scatter(x=v["epoch"] + 1, y=v["valid_ndcg10"], name=variant, legendgroup=variant,
                            showlegend=False, line=dict(color=color), mode="lines+markers", row=1, col=2)
    fig.update_xaxes(title="epoch")
    return fig.update_layout(title=title, template="plotly_white", height=380)


def conflict_heatmap(conflict: pd.DataFrame, title: str = "Head vs tail gradient cosine") -> go.Figure:
    """Heatmap of gradient cosine (layer x training step), one panel per variant.

    Red = the groups' gradients oppose each other (interference), blue = they agree."""
    c = conflict if "variant" in conflict else conflict.assign(variant="model")
    variants = list(dict.fromkeys(c["variant"]))
    fig = make_subplots(rows=1, cols=len(variants), subplot_titles=variants, shared_yaxes=True)
    for i, v in enumerate(variants, start=1):
        grid = c[c["variant"] == v].pivot_table(index="layer", columns="step", values="cosine", sort=False)
        fig.add_heatmap(z=grid.to_numpy(), x=grid.columns, y=list(grid.index), zmin=-1, zmax=1,
                        colorscale="RdBu", showscale=i == len(variants), colorbar=dict(title="cosine"),
                        hovertemplate="step %{x}<br>%{y}: %{z:.3f}<extra>" + v + "</extra>", row=1, col=i)
        fig.update_xaxes(title="training step", row=1, col=i)
    return fig.update_layout(title=title, template="plotly_white", height=360)


def domain_bars(table: pd.DataFrame, title: str = "Domains") -> go.Figure:
    """Interactions (bars) and items (markers, right axis) per domain, from ``data.domain_table``."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_bar(x=table.index.astype(str), y=table["interactions"], name="interactions",
                marker_color=GROUP_COLORS["all"])
    fig.add_scatter(x=table.index.astype(str), y=table["items"], name="items", mode="markers",
                    marker=dict(color=GROUP_COLORS["head"], size=9), secondary_y=True)
    fig.update_yaxes(title="interactions", secondary_y=False)
    fig.update_yaxes(title="items", secondary_y=True, rangemode="tozero")
    return fig.update_layout(title=title, template="plotly_white", height=400)


def _palette(i: int) -> str:
    colors = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
    return colors[i % len(colors)]


def discriminator_curves(disc: pd.DataFrame, smooth: int = 1,
                         title: str = "Head-vs-tail discriminator during training") -> go.Figure:
    """Balanced accuracy (left) and loss (right) of an activeness discriminator per training
    step, one line per variant (mean over seeds, then a trailing mean over ``smooth`` logged
    steps). Dotted lines mark chance: accuracy 0.5 and loss ln 2 (a coin flip under the
    class-balanced cross-entropy). An encoder that hides activeness pushes both there.

    ``disc`` has columns step, accuracy, loss and optionally variant, seed (the
    ``"discriminator"`` diagnostic of :mod:`seqtransfer.methods.gradient_alignment`)."""
    d = disc if "variant" in disc else disc.assign(variant="model")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("balanced accuracy (training batches)",
                                                        "discriminator loss"))
    for i, (variant, part) in enumerate(d.groupby("variant", sort=False)):
        curve = part.groupby("step")[["accuracy", "loss"]].mean()
        curve = curve.rolling(max(1, smooth), min_periods=1).mean()
        for col, column in enumerate(("accuracy", "loss"), start=1):
            fig.add_scatter(x=curve.index, y=curve[column], name=variant, legendgroup=variant,
                            showlegend=col == 1, mode="lines+markers", marker=dict(size=4),
                            line=dict(color=_palette(i)), row=1, col=col,
                            hovertemplate="step %{x}<br>" + column + " %{y:.3f}<extra>" + variant + "</extra>")
    fig.add_hline(y=0.5, line_dash="dot", line_color="grey", annotation_text="chance", row=1, col=1)
    fig.add_hline(y=float(np.log(2)), line_dash="dot", line_color="grey", annotation_text="ln 2", row=1, col=2)
    fig.update_xaxes(title="training step")
    return fig.update_layout(title=title, template="plotly_white", height=380)


def projection_scatter(points: dict[str, np.ndarray], head_mask: np.ndarray, max_points: int = 2000,
                       seed: int = 0, title: str = "Sequence representations, first two principal components"
                       ) -> go.Figure:
    """One scatter panel per variant of (U, 2) user points (e.g. ``pca_2d`` of each model's
    representations), head users and tail users in their group colours.

    The same users appear in every panel: at most ``max_points`` of them, drawn without
    replacement by ``numpy.random.default_rng(seed)``. Tail points are drawn first so the
    fewer head points stay visible. Each panel keeps its own axes (each model's projection has
    its own coordinates)."""
    head = np.asarray(head_mask, dtype=bool)
    n = len(head)
    for variant, xy in points.items():
        if np.shape(xy) != (n, 2):
            raise ValueError(f"points[{variant!r}] must have shape ({n}, 2), got {np.shape(xy)}")
    keep = np.sort(np.random.default_rng(seed).choice(n, size=min(max_points, n), replace=False))
    variants = list(points)
    fig = make_subplots(rows=1, cols=max(1, len(variants)), subplot_titles=variants)
    for col, variant in enumerate(variants, start=1):
        xy = np.asarray(points[variant])[keep]
        for group, mask in (("tail", ~head[keep]), ("head", head[keep])):
            fig.add_scatter(x=xy[mask, 0], y=xy[mask, 1], mode="markers", name=group, legendgroup=group,
                            showlegend=col == 1, marker=dict(color=GROUP_COLORS[group], size=4, opacity=0.6),
                            hovertemplate=group + " user<extra>" + variant + "</extra>", row=1, col=col)
        fig.update_xaxes(title="PC 1", row=1, col=col)
    fig.update_yaxes(title="PC 2", row=1, col=1)
    return fig.update_layout(title=f"{title} ({len(keep)} of {n} users)", template="plotly_white",
                             height=400, legend_title_text="users")


def strata_bars(table: pd.DataFrame, title: str = "Activeness strata and their weight in the gradient"
                ) -> go.Figure:
    """Per activeness stratum: share of users, share of training positions (the stratum's weight
    in the plain mean gradient) and prior P(z) (its weight in the backdoor-adjusted gradient).

    ``table`` is ``methods.intervened.describe_strata`` (or a run's ``"strata"`` diagnostic):
    columns stratum, min/max activeness, share of users, positions, prior."""
    labels = [f"{z} ({lo:.0f}-{hi:.0f})" for z, lo, hi in
              zip(table["stratum"], table["min activeness"], table["max activeness"])]
    positions = table["positions"] / max(1, table["positions"].sum())
    fig = go.Figure()
    for i, (name, values) in enumerate((("share of users", table["share of users"]),
                                        ("share of training positions: plain mean", positions),
                                        ("prior P(z): adjusted", table["prior"]))):
        fig.add_bar(x=labels, y=values, name=name, marker_color=_palette(i),
                    hovertemplate="stratum %{x}<br>" + name + ": %{y:.3f}<extra></extra>")
    fig.update_xaxes(title="stratum (activeness range, training interactions)")
    fig.update_yaxes(title="share", rangemode="tozero")
    return fig.update_layout(barmode="group", title=title, template="plotly_white", height=380)


def stratum_gradient_bars(frame: pd.DataFrame,
                          title: str = "Per-stratum mean gradients against the two aggregates") -> go.Figure:
    """Three panels over activeness strata, one colour per model: the norm of each stratum's
    mean gradient, and its cosine with the plain-mean and with the backdoor-adjusted aggregate.
    The legend gives each model's cosine between the two aggregates.

    ``frame`` is ``diagnostics.stratum_gradients`` output (rows "stratum z", "plain",
    "adjusted"), optionally stacked with a ``variant`` column
    (``methods.intervened.gradient_view``)."""
    f = frame if "variant" in frame else frame.assign(variant="model")
    fig = make_subplots(rows=1, cols=3, subplot_titles=("gradient norm", "cosine with the plain mean",
                                                        "cosine with the adjusted aggregate"))
    for i, (variant, part) in enumerate(f.groupby("variant", sort=False)):
        per = part[part["gradient"].str.startswith("stratum")]
        agg = part.set_index("gradient")
        cross = float(agg.loc["plain", "cos_adjusted"]) if "plain" in agg.index else np.nan
        name = f"{variant} (plain vs adjusted: cos {cross:.3f})"
        for col, column in enumerate(("norm", "cos_plain", "cos_adjusted"), start=1):
            fig.add_scatter(x=per["stratum"].astype(int), y=per[column], name=name, legendgroup=variant,
                            showlegend=col == 1, mode="lines+markers", line=dict(color=_palette(i)),
                            hovertemplate="stratum %{x}<br>" + column + " %{y:.3f}<extra>" + variant + "</extra>",
                            row=1, col=col)
        fig.update_xaxes(title="stratum (0 = least active)", dtick=1)
    fig.update_yaxes(range=[-1, 1.05], row=1, col=2)
    fig.update_yaxes(range=[-1, 1.05], row=1, col=3)
    return fig.update_layout(title=title, template="plotly_white", height=380,
                             legend=dict(orientation="h", y=-0.25))


def sensitivity_lines(frame: pd.DataFrame, groups=("head", "tail"), metric: str = "NDCG@10",
                      title: str = "Sensitivity: the method against the base model") -> go.Figure:
    """One panel per sweep (number of strata, head share): the method's test metric (solid) and
    the base model's (dashed) per setting, one colour per user group; a red marker where the
    method falls below the base model (negative transfer).

    ``frame`` is ``methods.intervened.sensitivity`` output (sweep, setting, group, base, method)."""
    sweeps = list(dict.fromkeys(frame["sweep"]))
    names = {"n_strata": "number of strata", "head_frac": "head share (head_frac)"}
    fig = make_subplots(rows=1, cols=max(1, len(sweeps)), subplot_titles=[names.get(s, s) for s in sweeps],
                        shared_yaxes=True)
    for col, sweep in enumerate(sweeps, start=1):
        part = frame[frame["sweep"] == sweep]
        for group in groups:
            g = part[part["group"] == group].sort_values("setting")
            color = GROUP_COLORS.get(group)
            worse = g["method"] < g["base"]
            fig.add_scatter(x=g["setting"], y=g["method"], name=f"{group}: method", legendgroup=f"{group}m",
                            showlegend=col == 1, mode="lines+markers", line=dict(color=color),
                            marker=dict(size=9, color=color, line=dict(color=[NEGATIVE if w else color for w in worse],
                                                                       width=2)),
                            hovertemplate="%{x}<br>" + group + " method %{y:.4f}<extra></extra>", row=1, col=col)
            fig.add_scatter(x=g["setting"], y=g["base"], name=f"{group}: base model", legendgroup=f"{group}b",
                            showlegend=col == 1, mode="lines", line=dict(color=color, dash="dash"),
                            hovertemplate="%{x}<br>" + group + " base %{y:.4f}<extra></extra>", row=1, col=col)
        fig.update_xaxes(title=names.get(sweep, sweep), tickvals=sorted(part["setting"].unique()), row=1, col=col)
    fig.update_yaxes(title=f"test {metric}", row=1, col=1)
    return fig.update_layout(title=title, template="plotly_white", height=380)


def gate_bars(gates: pd.DataFrame, title: str = "Mean gate weight of each expert, per modality") -> go.Figure:
    """One panel per modality slot: the mean gate weight of every expert (x), one bar colour per
    variant. A uniform gate sits at 1/E on every expert (dashed line)."""
    slots = list(dict.fromkeys(gates["slot"]))
    fig = make_subplots(rows=1, cols=len(slots), subplot_titles=slots, shared_yaxes=True)
    variants = list(dict.fromkeys(gates["variant"]))
    for j, slot in enumerate(slots, start=1):
        part = gates[gates["slot"] == slot]
        for i, v in enumerate(variants):
            p = part[part["variant"] == v]
            fig.add_bar(x=p["expert"], y=p["weight"], name=v, legendgroup=v, showlegend=j == 1,
                        marker_color=_palette(i), row=1, col=j)
        n = part["expert"].nunique()
        if n:
            fig.add_hline(y=1 / n, line_dash="dash", line_color="grey", row=1, col=j)
        fig.update_xaxes(title="expert", row=1, col=j)
    return fig.update_layout(title=title, template="plotly_white", height=380, barmode="group",
                             yaxis_title="mean gate weight")


# ---------------------------------------------------------------------------------------------
# ECAT
# ---------------------------------------------------------------------------------------------

def selection_funnel_bars(funnel: pd.DataFrame, title: str = "Entire-space samples at each selection stage"
                          ) -> go.Figure:
    """One panel per variant: for every period (x) the source samples, the graph candidates and
    the samples kept by the domain classifier (bars, log axis); the classifier's AUC on hover."""
    variants = list(dict.fromkeys(funnel["variant"]))
    fig = make_subplots(rows=1, cols=max(1, len(variants)), subplot_titles=variants or [""], shared_yaxes=True)
    stages = list(dict.fromkeys(funnel["stage"]))
    for j, v in enumerate(variants, start=1):
        part = funnel[funnel["variant"] == v]
        for i, stage in enumerate(stages):
            p = part[part["stage"] == stage]
            fig.add_bar(x=[f"period {k}" for k in p["period"]], y=p["samples"], name=stage, legendgroup=stage,
                        showlegend=j == 1, marker_color=_palette(i), customdata=np.c_[p["share"], p["auc"]],
                        hovertemplate=stage + ": %{y:,} (%{customdata[0]:.1%} of source samples)"
                                      "<br>classifier AUC %{customdata[1]:.3f}<extra></extra>", row=1, col=j)
    fig.update_yaxes(type="log", title="samples (log)", row=1, col=1)
    return fig.update_layout(title=title, template="plotly_white", height=380, barmode="group")


def selection_histograms(p: np.ndarray, w: np.ndarray, alpha: np.ndarray, p_min: float | None = None,
                         clip: float | None = None, title: str = "Selection probability, importance weight and "
                         "distillation weight") -> go.Figure:
    """Three histograms: the domain classifier's p of the graph candidates (cut ``p_min``
    dashed), the importance weights w of the kept ones (mean 1; the clip, before normalising,
    is not drawn since normalising moves it) and the adaptive distillation weight alpha."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=["p (candidate looks like the target)",
                                                        "w (importance weight, mean 1)",
                                                        "alpha (teacher's share)"])
    for j, (name, values, rng) in enumerate((("p", p, (0, 1)), ("w", w, None), ("alpha", alpha, (0, 1))), start=1):
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if len(v):
            fig.add_histogram(x=v, nbinsx=40, name=name, showlegend=False, marker_color=_palette(j - 1),
                              hovertemplate=name + " %{x}: %{y} samples<extra></extra>", row=1, col=j)
        else:
            fig.add_annotation(text="not recorded in this run", showarrow=False, xref="x domain",
                               yref="y domain", x=0.5, y=0.5, row=1, col=j)
        if rng:
            fig.update_xaxes(range=list(rng), row=1, col=j)
        fig.update_xaxes(title=name, row=1, col=j)
    if p_min is not None:
        fig.add_vline(x=p_min, line_dash="dash", line_color=NEGATIVE, row=1, col=1,
                      annotation_text=f"p_min {p_min}", annotation_position="top right")
    if len(np.asarray(w)):
        fig.add_vline(x=1.0, line_dash="dot", line_color="grey", row=1, col=2)
    fig.update_yaxes(title="samples", row=1, col=1)
    return fig.update_layout(title=title, template="plotly_white", height=360)


def period_curves(periods: pd.DataFrame, split: str = "test", groups=("all", "tail"),
                  title: str = "Target NDCG@10 after each period") -> go.Figure:
    """NDCG@10 of the target's users after each chronological period, one line per variant,
    one panel per group; a one-period run is a single marker at the last period."""
    p = periods[periods["split"] == split]
    groups = [g for g in groups if g in set(p["group"])]
    fig = make_subplots(rows=1, cols=max(1, len(groups)), subplot_titles=groups or [""], shared_yaxes=True)
    last = int(p["period"].max()) if len(p) else 0
    for j, g in enumerate(groups, start=1):
        for i, (v, part) in enumerate(p[p["group"] == g].groupby("variant", sort=False)):
            part = part.sort_values("period")
            x = part["period"] if len(part) > 1 else [last]
            fig.add_scatter(x=x, y=part["ndcg10"], name=v, legendgroup=v, showlegend=j == 1,
                            mode="lines+markers", line=dict(color=_palette(i)),
                            hovertemplate=v + "<br>period %{x}: %{y:.4f}<extra></extra>", row=1, col=j)
        fig.update_xaxes(title="period", tickvals=list(range(last + 1)), row=1, col=j)
    fig.update_yaxes(title=f"{split} NDCG@10", row=1, col=1)
    return fig.update_layout(title=title, template="plotly_white", height=380)
