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
        cut = max(float(head_threshold), 1.0)
        # On a log axis plotly.js reads a shape's x in data units but an annotation's x in log10
        # units, and add_vline(annotation_text=...) passes the same x to both: the label landed at
        # 10^threshold and stretched the axis to 10^150 and beyond. Hence the label on its own.
        fig.add_vline(x=cut, line_dash="dash", line_color=GROUP_COLORS["head"])
        fig.add_annotation(x=np.log10(cut), xref="x", y=1, yref="y domain", xanchor="left",
                           yanchor="top", showarrow=False, text=f"head: > {head_threshold:.0f}",
                           font=dict(color=GROUP_COLORS["head"]))
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
               baseline: str | None = None, title: str | None = None,
               comparisons: pd.DataFrame | None = None) -> go.Figure:
    """Bars of mean metric per variant (x) and group (colour), 95% intervals when several seeds,
    and each seed's own value as a point on its bar (the ``seed_values`` of ``summarize``), so
    the seed spread behind a verdict shows.

    ``summary`` is :func:`seqtransfer.methods.summarize` output. When ``baseline`` names a
    variant, bars of negative transfer against it get a red outline, so it shows in colour, not
    only in numbers: with ``comparisons`` (:func:`seqtransfer.methods.compare` output) only
    where the paired interval lies below zero; without, wherever the mean is below the baseline's.
    """
    s = summary[(summary["metric"] == metric) & (summary["k"] == k)]
    s = s[s["n_seeds"] > 0]
    negative = None
    if comparisons is not None and baseline is not None:
        c = comparisons[(comparisons["baseline"] == baseline) & (comparisons["metric"] == metric)
                        & (comparisons["k"] == k)]
        negative = {(v, g) for v, g, verdict in c[["variant", "group", "verdict"]].itertuples(index=False)
                    if verdict == "negative"}
    fig = go.Figure()
    for group, part in s.groupby("group", sort=False):
        base = None
        if baseline is not None:
            b = s[(s["variant"] == baseline) & (s["group"] == group)]["mean"]
            base = float(b.iloc[0]) if len(b) else None
        if negative is not None:
            worse = [(v, group) in negative for v in part["variant"]]
        else:
            worse = [base is not None and v != baseline and m < base for v, m in zip(part["variant"], part["mean"])]
        fig.add_bar(x=part["variant"], y=part["mean"], name=group, offsetgroup=group, legendgroup=group,
                    marker=dict(color=GROUP_COLORS.get(group),
                                line=dict(color=[NEGATIVE if w else "rgba(0,0,0,0)" for w in worse], width=3)),
                    error_y=dict(type="data", array=part["ci95"].fillna(0)),
                    hovertemplate="%{x}<br>" + f"{group}: " + "%{y:.4f}<extra></extra>")
        if "seed_values" in part and (part["n_seeds"] > 1).any():
            xs, ys, seeds = [], [], []
            names = part["seeds"] if "seeds" in part else [range(len(v)) for v in part["seed_values"]]
            for variant, values, ids in zip(part["variant"], part["seed_values"], names):
                xs += [variant] * len(values)
                ys += list(values)
                seeds += list(ids)
            fig.add_scatter(x=xs, y=ys, mode="markers", name=f"{group}: each seed", offsetgroup=group,
                            legendgroup=group, showlegend=False, customdata=seeds,
                            marker=dict(color="#212121", size=6, symbol="circle-open", line=dict(width=1.5)),
                            hovertemplate="%{x}<br>" + f"{group}, seed " + "%{customdata}: %{y:.4f}<extra></extra>")
    label = f"{metric.upper()}@{k}"
    fig.update_layout(barmode="group", scattermode="group", template="plotly_white", height=420,
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
    top = h["valid_ndcg10"].max() if "valid_ndcg10" in h else np.nan
    if np.isfinite(top) and top > 0:  # NDCG from zero; one evaluation would get plotly's +-1
        fig.update_yaxes(range=[0, 1.1 * top], row=1, col=2)
    return fig.update_layout(title=title, template="plotly_white", height=380)


def conflict_heatmap(conflict: pd.DataFrame, title: str = "Head vs tail gradient cosine") -> go.Figure:
    """Heatmap of gradient cosine (layer x training step), one panel per variant.

    Red = the groups' gradients oppose each other (interference), blue = they agree."""
    c = conflict if "variant" in conflict else conflict.assign(variant="model")
    missing = [k for k in ("layer", "step", "cosine") if k not in c]
    if missing:
        raise ValueError(f"conflict_heatmap: the frame lacks column(s) {', '.join(missing)}; pass the "
                         "'conflict' diagnostic (columns step, layer, cosine and optionally variant)")
    if c.empty:
        raise ValueError("conflict_heatmap: no rows; was the model trained with conflict_every set?")
    variants = list(dict.fromkeys(c["variant"]))
    # mean over seeds; NaN cosines (a layer without gradient) stay as gaps, not dropped rows.
    # Layers keep their model order, steps go in increasing order: seeds whose records start at
    # different steps (a run continued from its rung checkpoint) would otherwise put the later
    # seeds' early steps after the first seed's last, and plotly.js draws a heatmap with a
    # non-monotonic x as an empty panel
    grids = {v: c[c["variant"] == v].pivot_table(index="layer", columns="step", values="cosine",
                                                   sort=False, dropna=False).sort_index(axis=1)
             for v in variants}
    # Panels share the layer axis only when their layer lists agree: plotly.js throws
    # ("reading 'length'") on matched category axes with different categories (SASRec next
    # to GRU4Rec), and draws nothing.
    same_layers = len({tuple(g.index) for g in grids.values()}) == 1
    fig = make_subplots(rows=1, cols=len(variants), subplot_titles=variants, shared_yaxes=same_layers,
                        horizontal_spacing=0.03 if same_layers else 0.12)
    for i, (v, grid) in enumerate(grids.items(), start=1):
        fig.add_heatmap(z=grid.to_numpy(), x=list(grid.columns), y=list(grid.index), zmin=-1, zmax=1,
                        colorscale="RdBu", showscale=i == len(variants), colorbar=dict(title="cosine"),
                        hovertemplate="step %{x}<br>%{y}: %{z:.3f}<extra>" + v + "</extra>", row=1, col=i)
        # few probes: ticks at the probed steps only (one step would get ticks at -0.4 ... 0.4)
        fig.update_xaxes(title="training step", row=1, col=i,
                         tickvals=list(grid.columns) if grid.shape[1] <= 10 else None)
        fig.update_yaxes(type="category", autorange="reversed", row=1, col=i)  # first layer on top
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
    labels = [f"{z} (empty)" if pd.isna(lo) else f"{z} ({lo:.0f}-{hi:.0f})" for z, lo, hi in
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
# VQ codebook views (MetaRec); inputs from the codebook functions at the end of diagnostics.py

def code_usage_lines(usage: pd.DataFrame, n_codes: int | None = None,
                     title: str = "Codebook use per domain over training") -> go.Figure:
    """Two panels over the snapshot steps, one line per domain: codes used (the codebook size
    dashed when given) and the perplexity of the items' code frequencies."""
    u = usage[usage["step"] >= 0].sort_values("step")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("codes used", "perplexity (exp entropy)"))
    for i, (d, part) in enumerate(u.groupby("domain", sort=False)):
        for col, y in ((1, "codes_used"), (2, "perplexity")):
            fig.add_scatter(x=part["step"], y=part[y], mode="lines+markers", name=str(d), legendgroup=str(d),
                            showlegend=col == 1, line_color=_palette(i), row=1, col=col,
                            hovertemplate=f"{d}<br>step %{{x}}<br>{y} %{{y:.1f}}<extra></extra>")
    if n_codes:
        fig.add_hline(y=n_codes, line_dash="dash", line_color="grey", annotation_text=f"K = {n_codes}", row=1, col=1)
    fig.update_xaxes(title="training step")
    return fig.update_layout(title=title, template="plotly_white", height=380, legend_title_text="domain")


def codebook_map(proj: pd.DataFrame, max_items: int = 600, seed: int = 0, highlight: str | None = None,
                 title: str = "Codebook and items, first two principal components") -> go.Figure:
    """The codes (black crosses, sized by how many items use them) and each domain's items
    (dots, at most ``max_items`` per domain, the same ids at every step) in 2-D; the
    ``highlight`` domain (e.g. the target) is drawn after the others, larger and outlined; the
    codes on top of all. With several
    snapshot steps a slider moves through training (axes fixed over all steps); negative steps
    (the kept weights) come last, labelled "kept"."""
    from .diagnostics import CODEBOOK
    if proj.empty:
        raise ValueError("nothing to draw: the projection frame is empty (a model without a quantiser?)")
    steps = sorted(proj["step"].unique(), key=lambda s: (s < 0, s))
    domains = [d for d in dict.fromkeys(proj["domain"]) if d != CODEBOOK]
    if highlight is not None:
        if highlight not in domains:
            raise ValueError(f"highlight {highlight!r} is not a domain of the frame; domains: {domains}")
        domains = [d for d in domains if d != highlight] + [highlight]
    rng = np.random.default_rng(seed)
    keep = {}
    for d in domains:
        ids = np.unique(proj.loc[proj["domain"] == d, "item"])
        keep[d] = set(rng.choice(ids, size=min(max_items, len(ids)), replace=False).tolist())

    def traces(step):
        part = proj[proj["step"] == step]
        items = part[part["domain"] != CODEBOOK]
        use = items["code"].value_counts()
        cb = part[part["domain"] == CODEBOOK]
        size = 4 + 12 * np.sqrt(cb["code"].map(use).fillna(0).to_numpy() / max(1, use.max() if len(use) else 1))
        out = []
        for i, d in enumerate(domains):
            p = items[(items["domain"] == d) & items["item"].isin(keep[d])]
            out.append(go.Scatter(x=p["x"], y=p["y"], mode="markers", name=str(d), text=p["code"],
                                  marker=dict(color=_palette(i), size=6 if d == highlight else 4,
                                              opacity=0.7 if d == highlight else 0.5,
                                              line=dict(width=0.5 if d == highlight else 0, color="black")),
                                  hovertemplate=f"{d} item %{{customdata}} on code %{{text}}<extra></extra>",
                                  customdata=p["item"]))
        # the codes last, on top of the items
        out.append(go.Scatter(x=cb["x"], y=cb["y"], mode="markers", name="codes", marker=dict(
            symbol="x", color="black", size=size, line_width=0), customdata=cb["code"].map(use).fillna(0),
            text=cb["code"], hovertemplate="code %{text}: %{customdata} items<extra></extra>"))
        return out

    label = lambda s: "kept" if s < 0 else str(s)  # noqa: E731
    fig = go.Figure(traces(steps[-1]))
    if len(steps) > 1:
        fig.frames = [go.Frame(data=traces(s), name=label(s)) for s in steps]
        fig.update_layout(sliders=[dict(active=len(steps) - 1, currentvalue=dict(prefix="step: "), pad=dict(t=40),
                                        steps=[dict(label=label(s), method="animate",
                                                    args=[[label(s)], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                                             transition=dict(duration=0))])
                                               for s in steps])])
    pad = lambda a: (a.min() - 0.05 * (np.ptp(a) or 1), a.max() + 0.05 * (np.ptp(a) or 1))  # noqa: E731
    fig.update_xaxes(title="PC 1", range=pad(proj["x"].to_numpy()))
    fig.update_yaxes(title="PC 2", range=pad(proj["y"].to_numpy()))
    return fig.update_layout(title=title, template="plotly_white", height=520, legend_title_text="")


def code_sharing_bars(sharing: pd.DataFrame, title: str = "Codes shared by several domains") -> go.Figure:
    """Bars over the number of domains using a code: the share of used codes and the share of
    items on such codes (one bar group per variant when a ``variant`` column is given)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("share of used codes", "share of items"), shared_yaxes=True)
    groups = sharing.groupby("variant", sort=False) if "variant" in sharing.columns else [("", sharing)]
    for i, (v, part) in enumerate(groups):
        for col, y in ((1, "share_of_used"), (2, "share_of_items")):
            fig.add_bar(x=part["domains"], y=part[y], name=str(v) or "codes", legendgroup=str(v),
                        showlegend=col == 1, marker_color=_palette(i), row=1, col=col,
                        hovertemplate="used by %{x} domain(s): %{y:.1%}<extra></extra>")
    fig.update_xaxes(title="domains using the code", dtick=1)
    fig.update_yaxes(tickformat=".0%", range=[0, 1])
    return fig.update_layout(title=title, template="plotly_white", height=360, barmode="group")


def source_weight_lines(weights: pd.DataFrame, smooth: int = 1,
                        title: str = "Source weights and meta-gradient cosines per meta iteration") -> go.Figure:
    """One row of two panels per variant (when a ``variant`` column is given): each source's
    weight at the iterations it was sampled (uniform 1/S dotted) and the cosine of its
    meta-gradient with the target gradient; ``smooth`` = rolling mean over that many points."""
    groups = list(weights.groupby("variant", sort=False)) if "variant" in weights.columns else [("", weights)]
    fig = make_subplots(rows=len(groups), cols=2, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=[t for v, _ in groups for t in (f"{v} weight".strip(), f"{v} cosine with target gradient".strip())])
    sources = list(dict.fromkeys(weights["source"]))
    for r, (v, part) in enumerate(groups, start=1):
        n_per_step = part.groupby("step")["source"].nunique()
        if len(n_per_step):
            fig.add_hline(y=1 / n_per_step.max(), line_dash="dot", line_color="grey", row=r, col=1)
        for i, s in enumerate(sources):
            p = part[part["source"] == s].sort_values("step")
            for col, y in ((1, "weight"), (2, "grad_cosine")):
                vals = p[y].rolling(max(1, smooth), min_periods=1).mean()
                fig.add_scatter(x=p["step"], y=vals, mode="lines+markers", marker_size=4, name=str(s), legendgroup=str(s),
                                showlegend=r == 1 and col == 1, line_color=_palette(i), row=r, col=col,
                                hovertemplate=f"{s}<br>step %{{x}}<br>{y} %{{y:.3f}}<extra></extra>")
        fig.add_hline(y=0, line_color="lightgrey", row=r, col=2)
        fig.update_yaxes(range=[0, 1.02], row=r, col=1)       # weights: a fixed scale
        fig.update_yaxes(range=[-1.02, 1.02], row=r, col=2)   # cosines: a fixed scale
    fig.update_xaxes(title="meta iteration", row=len(groups))
    return fig.update_layout(title=title, template="plotly_white", height=300 + 220 * len(groups),
                             legend_title_text="source")


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
    # every panel on the same log axis (shared_yaxes matches their ranges), so bars compare
    # across variants; the first panel carries the tick labels and the title
    fig.update_yaxes(type="log")
    fig.update_yaxes(title="samples (log)", row=1, col=1)
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
