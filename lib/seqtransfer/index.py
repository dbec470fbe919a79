"""The batch index: changes against each row's baseline, the leaderboard, notebook status.

``change_table`` compares every recorded method with its own baseline (the row's
``baseline`` column, set by ``record(..., baseline=...)``, or ``default_baseline``): relative
change of a test metric, paired by seed, with a 95% interval where there are several seeds.
``leaderboard`` ranks absolute values. ``write_index`` writes ``index.html`` from both, with
each notebook's verdict sentences under its rows.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .browser import gallery_html
from .stats import ci95, percent, verdict_interval
from .pages import PLOTLYJS, write_plotlyjs
from .record import _present

# ---------------------------------------------------------------------------------------------
# Leaderboard and index
# ---------------------------------------------------------------------------------------------

def _ci95(values: pd.Series) -> float:
    """Half-width of the 95% t-interval of the mean; NaN for a single value (``stats.ci95``)."""
    return ci95(values.to_numpy(dtype=float))


def leaderboard(results: pd.DataFrame, k: int = 10, metrics: Sequence[str] = ("ndcg", "hr"),
                groups: Sequence[str] = ("all", "head", "tail")) -> pd.DataFrame:
    """Methods ranked by test metric@k, mean over seeds.

    Args:
        results: rows as in ``results.csv`` (``RESULT_COLUMNS``).
        k, metrics, groups: which cut-off, metrics and user groups make the columns.

    Returns:
        One row per (method, dataset, backbone) with ``seeds`` (how many) and for every
        metric and group a column ``"{metric}@{k} {group}"`` (mean over seeds) and
        ``"{metric}@{k} {group} ci95"`` (half-width of the 95% t-interval, NaN for one seed),
        sorted by the first metric for the first group, best first.
    """
    keys = ["method", "dataset", "backbone"]
    rows = results[(results["k"] == k) & results["metric"].isin(metrics)
                   & results["group"].isin(groups)]
    columns = [f"{m}@{k} {g}{s}" for m in metrics for g in groups for s in ("", " ci95")]
    if rows.empty:
        return pd.DataFrame(columns=keys + ["seeds"] + columns)
    # one value per seed first, so a seed recorded twice does not count double
    per_seed = rows.groupby(keys + ["seed", "metric", "group"], as_index=False)["value"].mean()
    stats = per_seed.groupby(keys + ["metric", "group"])["value"].agg(["mean", _ci95])
    wide = stats.unstack(["metric", "group"])
    board = pd.DataFrame(index=wide.index)
    for m in metrics:
        for g in groups:
            for stat, suffix in (("mean", ""), ("_ci95", " ci95")):
                key = (stat, m, g)
                board[f"{m}@{k} {g}{suffix}"] = wide[key] if key in wide.columns else float("nan")
    board.insert(0, "seeds", per_seed.groupby(keys)["seed"].nunique())
    return (board.sort_values(f"{metrics[0]}@{k} {groups[0]}", ascending=False, na_position="last")
            .reset_index())


# The rule for rows whose record names no baseline: the first of these variants (``{backbone}``:
# the row's backbone) recorded by the same notebook for the same dataset. The joint model of the
# same backbone serves 01-03; from-scratch or target-only training the cross-domain notebooks.
BASELINE_VARIANTS = ("{backbone} joint", "{backbone} from scratch", "{backbone} from-scratch",
                     "{backbone} target-only")
CHANGE_GROUPS = ("all", "head", "tail", "cold")


def default_baseline(results: pd.DataFrame) -> pd.Series:
    """Each row's baseline: its recorded ``baseline`` where there is one, else by rule
    (``BASELINE_VARIANTS``); NaN where neither gives one. A row is never its own baseline,
    and rows without a variant (``method`` without ``:``) get none by rule.

    Args:
        results: rows as in ``results.csv`` (``RESULT_COLUMNS``; a missing ``baseline`` column
            counts as empty).

    Returns:
        A series aligned with ``results``: the baseline's method label or NaN.
    """
    given = results["baseline"] if "baseline" in results else pd.Series(float("nan"), index=results.index)
    given = given.where(given.map(_present), float("nan"))
    out = given.copy()
    for (_, _, backbone), part in results.groupby(["notebook", "dataset", "backbone"], sort=False):
        variant_of = {m: m.split(":", 1)[1] for m in part["method"].unique() if ":" in m}
        by_variant = {v: m for m, v in variant_of.items()}
        base = next((by_variant[r.format(backbone=backbone)] for r in BASELINE_VARIANTS
                     if r.format(backbone=backbone) in by_variant), None)
        if base is None:
            continue
        rule = part["method"].map(lambda m: base if m in variant_of and m != base else float("nan"))
        missing = out.loc[part.index].isna()
        out.loc[part.index[missing]] = rule[missing]
    return out


def change_table(results: pd.DataFrame, k: int = 10, metrics: Sequence[str] = ("ndcg", "hr"),
                 groups: Sequence[str] = CHANGE_GROUPS) -> pd.DataFrame:
    """Every method against its own baseline: relative change of test metric@k per user group.

    For a row with baseline ``b`` (``default_baseline``), the change for one seed is
    ``(value - value_b) / value_b`` with both from the same dataset, backbone and seed; the
    table holds the mean over the seeds both have and the half-width of its 95% t-interval
    (NaN with one seed). A baseline value of 0 gives NaN. A method recorded by several
    notebooks appears once, under the first.

    Args:
        results: rows as in ``results.csv``.
        k, metrics, groups: cut-off, metrics and user groups of the columns.

    Returns:
        One row per (method, dataset, backbone) with a baseline, in order of appearance:
        ``notebook``, ``method``, ``baseline``, ``dataset``, ``backbone``, ``seeds`` (paired
        seeds), and per metric and group ``"{metric}@{k} {group}"`` (relative change, 0.1 is
        +10%) and ``"{metric}@{k} {group} ci95"``.
    """
    keys = ["method", "dataset", "backbone"]
    columns = [f"{m}@{k} {g}{s}" for m in metrics for g in groups for s in ("", " ci95")]
    head = ["notebook", "method", "baseline", "dataset", "backbone", "seeds"]
    if results.empty:
        return pd.DataFrame(columns=head + columns)
    results = results.assign(baseline=default_baseline(results))
    rows = results[(results["k"] == k) & results["metric"].isin(metrics) & results["group"].isin(groups)]
    # one value per seed first, so a method recorded by several notebooks counts once
    per_seed = rows.groupby(keys + ["metric", "group", "seed"])["value"].mean()
    pairs = results[results["baseline"].notna()].drop_duplicates(keys)
    out = []
    for r in pairs.itertuples(index=False):
        line = {"notebook": r.notebook, "method": r.method, "baseline": r.baseline,
                "dataset": r.dataset, "backbone": r.backbone}
        seeds = set()
        for m in metrics:
            for g in groups:
                change = _paired_change(per_seed, (r.method, r.dataset, r.backbone, m, g),
                                        (r.baseline, r.dataset, r.backbone, m, g))
                seeds |= set(change.index)
                line[f"{m}@{k} {g}"] = change.mean() if len(change) else float("nan")
                line[f"{m}@{k} {g} ci95"] = _ci95(change)
        line["seeds"] = len(seeds)
        out.append(line)
    return pd.DataFrame(out, columns=head + columns)


def _paired_change(per_seed: pd.Series, key: tuple, base_key: tuple) -> pd.Series:
    """Relative change per seed, over the seeds both keys have (seed -> change)."""
    try:
        a, b = per_seed.loc[key], per_seed.loc[base_key]
    except KeyError:
        return pd.Series(dtype=float)
    a, b = a.align(b, join="inner")
    return ((a - b) / b.where(b != 0)).dropna()


_METRIC_NAMES = {"ndcg": "NDCG", "hr": "HR", "mrr": "MRR"}

_INDEX_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1250px; color: #222;
       padding: 0 1rem; }
h1 { margin-bottom: .2rem; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem .6rem; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: #e3f4e1; font-weight: bold; }
td.neg { background: #fdecea; color: #b71c1c; }
td.pos { background: #e8f5e9; color: #1b5e20; }
td.none { color: #555; }
td.na { color: #aaa; }
td.label { white-space: nowrap; }
table.changes { font-size: .92em; }
.ci { color: #777; font-size: .85em; }
.ok { color: #1a7f37; font-weight: bold; }
.failed, .timeout, .interrupted { color: #c62828; font-weight: bold; }
tr.bad td { background: #fdecea; }
tr.nb th { background: #e8eef7; text-align: left; font-size: 1.05em; }
.capped { color: #C44E52; font-size: .85em; }
tr.verdicts td { background: #fafafa; border-bottom: 2px solid #bbb; }
tr.verdicts ul { margin: .2rem 0; padding-left: 1.2rem; }
tr.verdicts li { margin: .15rem 0; }
td.error { color: #c62828; font-family: monospace; white-space: pre-wrap; max-width: 45rem; }
"""


def write_index(out: str | Path, status: pd.DataFrame, results: pd.DataFrame,
                info: Mapping[str, str] | None = None,
                verdicts: Mapping[str, Sequence[str]] | None = None,
                capped: Mapping[str, str] | None = None,
                comparisons: pd.DataFrame | None = None) -> Path:
    """Write ``out/index.html``: batch facts, the change of every method against its own
    baseline with each notebook's verdicts, the absolute leaderboard, notebook status.

    The page needs nothing from the network: CSS is inline and the leaderboard figure loads
    the folder's shared ``plotly.min.js`` (written here when missing).

    Args:
        out: the batch folder; links are relative to it.
        status: the status table (``STATUS_COLUMNS``).
        results: the recorded rows (``RESULT_COLUMNS``).
        info: label -> text shown under the title (budget, device, time, ...).
        verdicts: notebook -> its verdict sentences, shown under its rows.
        capped: variant -> stopping reason, for models stopped by a cap rather than by early
            stopping; the leaderboard marks their rows.
        comparisons: recorded ``methods.compare`` rows (``notebook`` column added): where one
            matches a change-table cell, the cell shows its paired-bootstrap interval and is
            coloured only when that interval excludes zero.

    Returns:
        The path of ``index.html``.
    """
    verdicts = verdicts or {}
    board = leaderboard(results)
    changes = change_table(results)
    n_ok = int((status["status"] == "ok").sum())
    bad = status.loc[status["status"] != "ok", "notebook"].tolist()
    facts = [f"{n_ok} of {len(status)} notebooks ok"
             + (f" <span class='failed'>(not ok: {html.escape(', '.join(bad))})</span>" if bad else "")]
    facts += [f"{html.escape(k)} <b>{html.escape(str(v))}</b>" for k, v in (info or {}).items()]
    body = [
        "<h1>seqtransfer batch report</h1>",
        f"<p class='meta'>{' &middot; '.join(facts)}</p>",
        "<h2>What each method changed against its own baseline</h2>",
        "<p>Relative change of test NDCG@10 and HR@10 (full ranking) against the row's baseline "
        "(the joint model of the same backbone, or from-scratch / target-only training for "
        "cross-domain methods), per user group, paired by seed; "
        "&plusmn; the half-width of the 95% interval (relative to the baseline): where the notebook "
        "recorded a comparison, the union of its paired bootstrap over users and its t-interval over "
        "seeds, else the t-interval over seeds of the change. "
        "<span style='color:#b71c1c'>Red: negative transfer</span>, "
        "<span style='color:#1b5e20'>green: positive transfer</span>, each only where both the "
        "users' and the seeds' interval exclude zero; uncoloured: no detectable difference, no "
        "interval, or one seed (marked: seed noise not measured). "
        "Under each notebook: its own verdict.</p>",
        _change_table_html(changes, status, verdicts, comparisons),
        "<h2>Leaderboard</h2>",
        "<p>Test split, full ranking over all items with each user's training items masked; "
        "mean over seeds with the half-width of the 95% t-interval where there are several; "
        "best per column highlighted; sorted by NDCG@10 over all users.</p>",
    ]
    if board.empty:
        body.append("<p><b>No results were recorded.</b></p>")
    else:
        write_plotlyjs(out)
        body += [_leaderboard_table(board, capped or {}), _leaderboard_figure(board).to_html(
            include_plotlyjs=PLOTLYJS, full_html=False, config={"displaylogo": False})]
    body.append(gallery_html(out))   # each notebook's figures as PNGs ("" when none were captured)
    body += ["<h2>Notebooks</h2>", _status_table(status),
             "<p>Raw data: <a href='results.csv'>results.csv</a>, "
             "<a href='status.csv'>status.csv</a>.</p>"]
    page = ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            "<title>seqtransfer batch report</title>\n"
            f"<style>{_INDEX_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    path = Path(out) / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _label_html(label: str) -> str:
    """``"gradient_alignment:sasrec GA"`` -> the variant, with the method small beneath it."""
    method, _, variant = str(label).partition(":")
    if not variant:
        return html.escape(method)
    return f"{html.escape(variant)}<br><span class='ci'>{html.escape(method)}</span>"


def _interval_lookup(comparisons: pd.DataFrame | None) -> dict:
    """(notebook, variant, baseline variant, "metric@k group") -> (relative half-width of the
    interval the verdict read, verdict, seeds compared)."""
    out = {}
    if comparisons is None or comparisons.empty:
        return out
    for r in comparisons.to_dict("records"):
        if r["b"] and r["lo"] is not None and r["hi"] is not None and not pd.isna(r["lo"]):
            seeds = r.get("n_seeds")
            seeds = 1 if seeds is None or pd.isna(seeds) else int(seeds)
            lo, hi = verdict_interval(r["lo"], r["hi"], _num(r.get("seed_lo")), _num(r.get("seed_hi")))
            out[r["notebook"], r["variant"], r["baseline"], f"{r['metric']}@{int(r['k'])} {r['group']}"] = (
                (hi - lo) / 2 / r["b"], r["verdict"], seeds)
    return out


def _num(value) -> float:
    """A recorded number, NaN where it is missing (None, or absent from an older record)."""
    return float("nan") if value is None or pd.isna(value) else float(value)


def _change_class(v: float, ci: float, interval: tuple | None) -> tuple[str, str]:
    """CSS class and interval text of one change cell. A change is coloured (red: negative
    transfer, green: positive) only on the verdict rule (``stats.paired_verdict``): the
    comparison the notebook recorded (intervals over users and over seeds, both excluding
    zero) where there is one, else the seed t-interval of the change. A one-seed comparison is
    left uncoloured and marked "one seed" (seed noise not measured), as is one run with no
    interval at all."""
    if interval is not None:
        half, verdict, seeds = interval
        if seeds < 2:
            return "num none", (f"<br><span class='ci' title='one seed: seed noise not measured'>&plusmn; "
                                f"{100 * half:.1f} &middot; one seed</span>")
        cls = {"negative": "num neg", "positive": "num pos"}.get(verdict, "num none")
        return cls, f"<br><span class='ci'>&plusmn; {100 * half:.1f}</span>"
    if pd.isna(ci):
        return "num none", "<br><span class='ci' title='one run: no interval'>no interval</span>"
    cls = "num neg" if v + ci < 0 else "num pos" if v - ci > 0 else "num none"
    return cls, f"<br><span class='ci'>&plusmn; {100 * ci:.1f}</span>"


def _change_table_html(changes: pd.DataFrame, status: pd.DataFrame,
                       verdicts: Mapping[str, Sequence[str]],
                       comparisons: pd.DataFrame | None = None) -> str:
    intervals = _interval_lookup(comparisons)
    value_cols = [c for c in changes.columns if f"{c} ci95" in changes.columns]
    width = 4 + len(value_cols)
    head = ("<tr><th>method</th><th>against</th><th>dataset</th><th>seeds</th>"
            + "".join(f"<th>{_column_title(c)}</th>" for c in value_cols) + "</tr>")
    order = list(status["notebook"]) + [n for n in changes["notebook"].unique() if n not in set(status["notebook"])]
    state = dict(zip(status["notebook"], status["status"]))
    links = dict(zip(status["notebook"], status["html"]))
    rows = []
    for nb in order:
        part = changes[changes["notebook"] == nb]
        said = list(verdicts.get(nb, []))
        if part.empty and not said and state.get(nb, "ok") == "ok":
            continue   # nothing compared (e.g. the data notebook)
        link = f" &middot; <a href='{html.escape(links[nb])}'>report</a>" if _present(links.get(nb)) else ""
        flag = "" if state.get(nb, "ok") == "ok" else f" <span class='failed'>{html.escape(state[nb])}</span>"
        rows.append(f"<tr class='nb'><th colspan='{width}'>{html.escape(nb)}{link}{flag}</th></tr>")
        for _, r in part.iterrows():
            cells = [f"<td>{_label_html(r['method'])}</td>",
                     f"<td class='label'>{_label_html(r['baseline'])}</td>",
                     f"<td>{html.escape(str(r['dataset']))}</td>", f"<td class='num'>{int(r['seeds'])}</td>"]
            for c in value_cols:
                v, ci = r[c], r[f"{c} ci95"]
                if pd.isna(v):
                    cells.append("<td class='num na' title='not recorded, or the baseline is 0'>&ndash;</td>")
                    continue
                key = (nb, str(r["method"]).split(":", 1)[-1], str(r["baseline"]).split(":", 1)[-1], c)
                cls, interval = _change_class(v, ci, intervals.get(key))
                cells.append(f"<td class='{cls}'>{percent(v)}{interval}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        if said:
            items = "".join(f"<li>{html.escape(v)}</li>" for v in said)
            rows.append(f"<tr class='verdicts'><td colspan='{width}'><ul>{items}</ul></td></tr>")
    if not rows:
        return "<p>No method was compared with a baseline.</p>"
    return f"<table class='changes'>\n{head}\n" + "\n".join(rows) + "\n</table>"


def _status_table(status: pd.DataFrame) -> str:
    head = "<tr><th>notebook</th><th>status</th><th>time (s)</th><th>report</th><th>error</th></tr>"
    rows = []
    for r in status.itertuples(index=False):
        name = html.escape(r.notebook)
        links = [f"<a href='{html.escape(r.html)}'>HTML</a>"] if _present(r.html) else []
        if r.status != "not started":   # a notebook the interrupted batch never started has none
            links.append(f"<a href='{name}.ipynb'>ipynb</a>")
        bad = " class='bad'" if r.status != "ok" else ""
        retried = " (retried)" if r.attempts > 1 else ""
        rows.append(
            f"<tr{bad}><td>{name}</td><td class='{html.escape(r.status)}'>{html.escape(r.status)}"
            f"{retried}</td><td class='num'>{r.seconds:.1f}</td><td>{' '.join(links)}</td>"
            f"<td class='error'>{html.escape(r.error if _present(r.error) else '')}</td></tr>")
    return f"<table>\n{head}\n" + "\n".join(rows) + "\n</table>"


def _leaderboard_table(board: pd.DataFrame, capped: Mapping[str, str] | None = None) -> str:
    value_cols = [c for c in board.columns if f"{c} ci95" in board.columns]
    best = {c: board[c].max() for c in value_cols}
    head = ("<tr><th>method</th><th>dataset</th><th>backbone</th><th>seeds</th>"
            + "".join(f"<th>{_column_title(c)}</th>" for c in value_cols) + "</tr>")
    rows = []
    for _, r in board.iterrows():
        cells = [f"<td>{html.escape(str(r[c]))}</td>" for c in ("method", "dataset", "backbone")]
        why = (capped or {}).get(str(r["method"]).split(":", 1)[-1])
        if why:   # not early-stopped: it may still have been improving
            cells[0] = (f"<td>{html.escape(str(r['method']))} <span class='capped' title='{html.escape(why)}'>"
                        f"(stopped by a cap: {html.escape(why)})</span></td>")
        cells.append(f"<td class='num'>{int(r['seeds'])}</td>")
        for c in value_cols:
            ci = r[f"{c} ci95"]
            text = "" if pd.isna(r[c]) else f"{r[c]:.4f}"
            text += "" if pd.isna(ci) else f" <span class='ci'>&plusmn; {ci:.4f}</span>"
            cls = "num best" if r[c] == best[c] else "num"
            cells.append(f"<td class='{cls}'>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n{head}\n" + "\n".join(rows) + "\n</table>"


def _column_title(column: str) -> str:
    """``"ndcg@10 all"`` -> ``"NDCG@10<br>all"``."""
    metric, group = column.split(" ", 1)
    name, k = metric.split("@")
    return f"{html.escape(_METRIC_NAMES.get(name, name))}@{k}<br>{html.escape(group)}"


def _leaderboard_figure(board: pd.DataFrame, k: int = 10,
                        groups: Sequence[str] = ("all", "head", "tail")):
    """Horizontal grouped bars, best first: NDCG@k and HR@k side by side sharing one label
    axis, one bar per user group, 95% error bars. The height grows with the rows, so the
    labels (one per line, left of the bars) never overlap however many rows there are."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .plots import GROUP_COLORS  # the group colours of every other figure

    several = board["dataset"].nunique() > 1
    labels = [r.method + ("" if r.backbone in r.method else f" ({r.backbone})")
              + (f" · {r.dataset}" if several else "") for r in board.itertuples()]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=(f"NDCG@{k}", f"HR@{k}"))
    for col, metric in enumerate(("ndcg", "hr"), start=1):
        for group in groups:
            name = f"{metric}@{k} {group}"
            fig.add_trace(go.Bar(
                y=labels, x=board[name], name=group, orientation="h", legendgroup=group,
                showlegend=col == 1, marker_color=GROUP_COLORS.get(group),
                error_x={"type": "data", "array": board[f"{name} ci95"], "visible": True}),
                row=1, col=col)
    fig.update_yaxes(autorange="reversed", automargin=True, tickfont={"size": 12})
    fig.update_layout(barmode="group", height=110 + 18 * len(groups) * len(labels),
                      template="plotly_white", legend={"orientation": "h", "y": 1.08, "x": 0,
                                                       "title": {"text": "users"}},
                      margin={"t": 90, "b": 40, "l": 10, "r": 10},
                      title=f"Test NDCG@{k} and HR@{k} by user group")
    return fig
