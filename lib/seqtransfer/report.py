"""Results store, batch execution and HTML reports.

Three jobs, one file:

1. ``record`` is called in the last cell of every notebook. It turns the notebook's tidy
   metrics into result rows and publishes them as one display output: a structural summary
   as ``text/plain`` (what nbval compares) and the rows themselves in the output's metadata
   (which nbval skips), so the regression check sees structure and the values still travel
   with the notebook. ``read_records`` reads them back from an executed ``.ipynb``.
2. ``run_batch`` executes notebooks with papermill, converts each to an offline HTML report
   and writes ``results.csv``, ``status.csv`` and an ``index.html`` with a leaderboard.
3. ``make_nbval_refs`` re-makes the smoke-budget reference copies that nbval checks.

papermill and nbconvert are imported inside the functions that use them: ``record`` runs in
every notebook kernel and should not pay seconds of imports it does not need.
"""
from __future__ import annotations

import html
import json
import logging
import math
import multiprocessing
import numbers
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nbformat
import pandas as pd
from IPython import get_ipython
from IPython.display import display

from .budget import BUDGETS as _BUDGET_SETTINGS

log = logging.getLogger(__name__)

# The notebooks the batch runs, name (file stem) -> file in notebooks/. One explicit dict, no
# discovery: a notebook joins the batch when it is added here.
NOTEBOOKS: dict[str, str] = {
    "00_data": "00_data.ipynb",
    "01_backbones": "01_backbones.ipynb",
    "02_gradient_alignment": "02_gradient_alignment.ipynb",
    "03_intervened_network": "03_intervened_network.ipynb",
    "04_ant": "04_ant.ipynb",
    "06_ecat": "06_ecat.ipynb",
}

BUDGETS = tuple(_BUDGET_SETTINGS)  # smoke, quick, full: the size switch of every notebook
DEVICES = ("auto", "cpu", "cuda")
# Per-cell execution timeout in seconds when none is given. papermill has none by default and
# a hung cell would stall the batch forever (DESIGN.md, toolchain facts).
DEFAULT_TIMEOUTS = {"smoke": 300.0, "quick": 3 * 3600.0, "full": 12 * 3600.0}

RECORD_KEY = "seqtransfer.record"
ROW_COLUMNS = ("notebook", "method", "dataset", "backbone", "seed", "group", "metric", "k", "value")
RESULT_COLUMNS = ROW_COLUMNS + ("n_users",)
STATUS_COLUMNS = ("notebook", "status", "seconds", "attempts", "error", "html")
REQUIRED_METRIC_COLUMNS = ("group", "metric", "k", "value")

# Batch kernels show plotly figures both as JSON (JupyterLab) and as HTML with plotly.js
# inlined once per notebook, which nbconvert keeps and which works offline.
BATCH_RENDERER = "plotly_mimetype+notebook"
# Reference copies for nbval keep plotly's JSON only: no 5 MB of plotly.js in tests/.
REFERENCE_RENDERER = "plotly_mimetype"
REFERENCE_PARAMETERS = {"budget": "smoke", "device": "cpu", "interactive": False, "cache_runs": False}

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class BatchError(ValueError):
    """Bad arguments to the batch runner (unknown notebook, budget, device, ...)."""


# ---------------------------------------------------------------------------------------------
# Recording results inside a notebook
# ---------------------------------------------------------------------------------------------


class Record(dict):
    """The payload ``record`` returns: a plain dict, except that IPython does not echo it.

    ``record`` displays the record itself. Echoed as the value of a cell's last expression,
    the payload would add an output with every value as ``text/plain``, which nbval compares.
    """

    def _ipython_display_(self) -> None:
        """Show nothing: the record output is already there."""


def record(metrics: pd.DataFrame, *, notebook: str, method: str, dataset: str, backbone: str,
           seed: int, extra: dict | None = None) -> dict:
    """Record a notebook's test metrics; call once, in the notebook's last cell.

    Args:
        metrics: tidy frame, one row per (group, metric, k), with columns ``group``
            (all/head/tail/cold/...), ``metric`` (hr/ndcg/mrr), ``k`` and ``value``. Optional
            columns and how they are used:
            ``split``: only rows with ``split == "test"`` are kept (selection is on validation);
            ``variant``: a sub-method label; a row's method becomes ``f"{method}:{variant}"``
            (``method`` alone where the variant is empty or missing);
            ``protocol``: rows not ranked by the default full protocol get the protocol in the
            metric name, ``f"{metric}_{protocol}"`` (e.g. ``ndcg_sampled``), so sampled-ranking
            numbers stay labelled and never enter the full-ranking leaderboard;
            ``seed``: a row's own seed (several seeds in one notebook) instead of ``seed``;
            ``n_users``: how many users the group holds, kept beside each value;
            ``backbone``: a row's own backbone (several backbones in one notebook);
            ``method``: a row's own method (a method notebook's base-model rows stay
            ``baseline:...``, the same label as in notebook 01, so the leaderboard counts them
            once).
        notebook, method, dataset, backbone, seed: what produced the numbers.
        extra: optional JSON-able dict stored with the record (e.g. the method's config).

    Returns:
        The payload (a ``Record``, i.e. a dict): the arguments above plus ``"rows"``, a list
        of dicts with the columns ``ROW_COLUMNS`` (and ``n_users`` where known). Inside
        IPython it is also displayed as one output whose only data is a ``text/plain``
        summary without any values (``record_summary``), with the payload in the output's
        metadata under ``"seqtransfer.record"``.
    """
    _check_meta(notebook=notebook, method=method, dataset=dataset, backbone=backbone, seed=seed)
    extra = {} if extra is None else extra
    _check_jsonable(extra)
    seed = int(seed)  # a numpy integer is welcome, but JSON wants a plain int
    payload = Record(notebook=notebook, method=method, dataset=dataset, backbone=backbone,
                     seed=seed, extra=extra,
                     rows=_record_rows(metrics, notebook, method, dataset, backbone, seed))
    if get_ipython() is not None:  # plain Python has nowhere to display; the return suffices
        display({"text/plain": record_summary(payload)}, raw=True,
                metadata={RECORD_KEY: dict(payload)})
    return payload


def _check_meta(**meta) -> None:
    for name, value in meta.items():
        if name == "seed":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"record(): seed must be an int, got {value!r}")
        elif not isinstance(value, str) or not value:
            raise TypeError(f"record(): {name} must be a non-empty string, got {value!r}")


def _check_jsonable(extra: dict) -> None:
    if not isinstance(extra, dict):
        raise TypeError(f"record(): extra must be a dict, got {type(extra).__name__}")
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"record(): extra must be JSON-able (plain str/int/float/list/dict, "
                         f"finite numbers): {err}") from None


def _record_rows(metrics: pd.DataFrame, notebook: str, method: str, dataset: str,
                 backbone: str, seed: int) -> list[dict]:
    """The validated result rows of ``record`` as JSON-able dicts (non-finite values -> None)."""
    if not isinstance(metrics, pd.DataFrame):
        raise TypeError("record(): metrics must be a pandas DataFrame, "
                        f"got {type(metrics).__name__}")
    missing = [c for c in REQUIRED_METRIC_COLUMNS if c not in metrics.columns]
    if missing:
        raise ValueError(
            f"record(): metrics lacks column(s) {', '.join(missing)}; it has "
            f"{', '.join(map(str, metrics.columns))}. Pass the tidy frame from evaluation: one row "
            "per (group, metric, k) with columns group, metric, k, value.")
    df = metrics
    if "split" in df.columns:
        df = df[df["split"] == "test"]
    if df.empty:
        raise ValueError("record(): no rows to record" + (
            " with split == 'test' (record stores test metrics; select models on validation)"
            if "split" in metrics.columns else ""))
    k = _numeric(df["k"], "k")
    if not (k == k.round()).all():
        raise ValueError("record(): column k must hold whole numbers (the cut-off K of HR@K)")
    value = _numeric(df["value"], "value")

    methods = _method_labels(df, method)
    metric_names = _metric_labels(df)
    seeds = _numeric(df["seed"], "seed").fillna(seed) if "seed" in df.columns else None
    n_users = _numeric(df["n_users"], "n_users") if "n_users" in df.columns else None
    backbones = ([str(b) if _present(b) else backbone for b in df["backbone"]]
                 if "backbone" in df.columns else [backbone] * len(df))

    rows = []
    for i in range(len(df)):
        row = {"notebook": notebook, "method": methods[i], "dataset": dataset,
               "backbone": backbones[i], "seed": seed if seeds is None else int(seeds.iloc[i]),
               "group": str(df["group"].iloc[i]), "metric": metric_names[i],
               "k": int(k.iloc[i]), "value": _finite_or_none(value.iloc[i])}
        if n_users is not None:
            row["n_users"] = None if pd.isna(n_users.iloc[i]) else int(n_users.iloc[i])
        rows.append(row)
    _check_unique(rows)
    return rows


def _numeric(column: pd.Series, name: str) -> pd.Series:
    try:
        return pd.to_numeric(column).astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"record(): column {name} must be numeric") from None


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None  # NaN is not valid JSON


def _present(label) -> bool:
    """Whether an optional label (variant, protocol) is given: not None, NaN or ''."""
    return not (pd.isna(label) or str(label) == "")


def _method_labels(df: pd.DataFrame, method: str) -> list[str]:
    """The row's ``method`` (else ``method``), as ``f"{method}:{variant}"`` where the row names
    a variant."""
    own = [str(m) if _present(m) else method for m in df["method"]] if "method" in df.columns \
        else [method] * len(df)
    if "variant" not in df.columns:
        return own
    return [f"{m}:{v}" if _present(v) else m for m, v in zip(own, df["variant"])]


def _metric_labels(df: pd.DataFrame) -> list[str]:
    """Metric names, suffixed with the ranking protocol where it is not the default ``full``."""
    metric = [str(m) for m in df["metric"]]
    if "protocol" not in df.columns:
        return metric
    return [f"{m}_{p}" if _present(p) and p != "full" else m
            for m, p in zip(metric, df["protocol"])]


def _check_unique(rows: list[dict]) -> None:
    seen = set()
    for row in rows:
        key = (row["method"], row["backbone"], row["seed"], row["group"], row["metric"], row["k"])
        if key in seen:
            raise ValueError(
                f"record(): two rows for method={key[0]} backbone={key[1]} seed={key[2]} "
                f"group={key[3]} {key[4]}@{key[5]}; give rows of different runs their own 'variant' or 'seed'")
        seen.add(key)


def record_summary(payload: dict) -> str:
    """The deterministic one-line summary of a record: structure only, no values or timings.

    It is the record output's ``text/plain``, so nbval fails when a notebook records
    different groups, metrics, cut-offs or variants, or values stop being finite in [0, 1],
    but not when a number moves.
    """
    rows = payload["rows"]
    head = " ".join(f"{f}={payload[f]}"
                    for f in ("notebook", "method", "dataset", "backbone", "seed"))
    parts = [f"seqtransfer record: {head}", f"{len(rows)} values"]
    methods = sorted({r["method"] for r in rows})
    if methods != [payload["method"]]:
        parts.append("methods=" + ",".join(methods))
    backbones = sorted({r["backbone"] for r in rows})
    if backbones != [payload["backbone"]]:
        parts.append("backbones=" + ",".join(backbones))
    seeds = sorted({r["seed"] for r in rows})
    if seeds != [payload["seed"]]:
        parts.append("seeds=" + ",".join(map(str, seeds)))
    parts.append("groups=" + ",".join(sorted({r["group"] for r in rows})))
    parts.append("metrics=" + ",".join(sorted({r["metric"] for r in rows})))
    parts.append("k=" + ",".join(map(str, sorted({r["k"] for r in rows}))))
    in_range = all(r["value"] is not None and 0.0 <= r["value"] <= 1.0 for r in rows)
    parts.append(f"all finite in [0, 1]: {in_range}")
    return "; ".join(parts)


def read_records(nb_path: str | Path) -> pd.DataFrame:
    """All rows recorded by ``record`` in an executed notebook.

    Args:
        nb_path: path of an executed ``.ipynb``.

    Returns:
        One row per recorded value with columns ``RESULT_COLUMNS`` (``n_users`` is NaN where
        unknown); an empty frame with those columns when the notebook recorded nothing.
    """
    nb = nbformat.read(str(nb_path), as_version=4)
    rows = [row
            for cell in nb.cells if cell.cell_type == "code"
            for output in cell.get("outputs", [])
            for row in output.get("metadata", {}).get(RECORD_KEY, {}).get("rows", [])]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


# ---------------------------------------------------------------------------------------------
# Choosing notebooks
# ---------------------------------------------------------------------------------------------


def _project_path(*parts: str) -> Path:
    """``parts`` under the source checkout when installed editable, else under the cwd."""
    if (_PROJECT_ROOT / "pyproject.toml").exists():
        return _PROJECT_ROOT.joinpath(*parts)
    return Path(*parts)


def resolve_notebooks(names: Sequence[str] | None = None,
                      notebooks: Mapping[str, str | Path] | None = None,
                      notebooks_dir: str | Path | None = None) -> dict[str, Path]:
    """The notebooks to run, name -> existing source path.

    Args:
        names: which names to run (``None``: all, in the mapping's order).
        notebooks: name -> file, relative to ``notebooks_dir`` or absolute (default
            ``NOTEBOOKS``).
        notebooks_dir: folder of the notebooks (default ``notebooks/`` of the checkout).

    Raises:
        BatchError: an unknown name (the message lists the known ones) or a missing file.
    """
    notebooks = NOTEBOOKS if notebooks is None else notebooks
    folder = Path(notebooks_dir) if notebooks_dir is not None else _project_path("notebooks")
    names = list(notebooks) if names is None else list(names)
    if not names:
        raise BatchError("no notebooks selected")
    unknown = [n for n in names if n not in notebooks]
    if unknown:
        raise BatchError(f"unknown notebook(s) {', '.join(unknown)}; "
                         f"known notebooks are {', '.join(notebooks)}")
    selected = {n: folder / notebooks[n] for n in dict.fromkeys(names)}
    absent = [str(p) for p in selected.values() if not p.exists()]
    if absent:
        raise BatchError(f"notebook file(s) not found: {', '.join(absent)}")
    return selected


# ---------------------------------------------------------------------------------------------
# Executing one notebook (runs in the batch process or in a pool worker)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    name: str
    src: Path
    out_dir: Path
    parameters: dict
    timeout: float


@contextmanager
def _kernel_env(**values: str) -> Iterator[None]:
    """Set environment variables for the kernels started inside the block, then restore.

    Kernels inherit the environment of the process that launches them and papermill offers
    no per-kernel environment, so the runner sets its own for the duration of the run.
    """
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _execute(src: Path, dst: Path, parameters: dict, timeout: float) -> tuple[str, str]:
    """Run ``src`` into ``dst`` with papermill; return (status, error), status ok/failed/timeout."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError

    try:
        pm.execute_notebook(str(src), str(dst), parameters=parameters, kernel_name="python3",
                            cwd=str(src.parent), execution_timeout=timeout,
                            progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as err:
        first_line = (err.source or "").strip().splitlines()[:1]
        # the prompt number, as the HTML report shows it beside the cell
        where = f"In [{err.exec_count}]" + (f": {first_line[0]}" if first_line else "")
        return "failed", f"{err.ename}: {err.evalue} ({where})"
    except CellTimeoutError:
        return "timeout", f"a cell ran longer than the {timeout:g} s per-cell timeout"
    except Exception as err:  # a dead kernel, a bad notebook file, ...: the batch goes on
        return "failed", f"{type(err).__name__}: {err}"
    return "ok", ""


def _run_one(job: _Job) -> dict:
    """Execute one notebook (retrying once after a timeout) and convert it to HTML."""
    ipynb = job.out_dir / f"{job.name}.ipynb"
    html_path = job.out_dir / f"{job.name}.html"
    for stale in (ipynb, html_path):  # never report a previous run's output as this one's
        stale.unlink(missing_ok=True)
    start = time.perf_counter()
    for attempts in (1, 2):
        status, error = _execute(job.src, ipynb, job.parameters, job.timeout)
        if status != "timeout":
            break
    html_name = ""
    if ipynb.exists():
        try:
            notebook_to_html(ipynb, html_path)
            html_name = html_path.name
        except Exception as err:  # a report that cannot be rendered must not stop the batch
            error = f"{error}; HTML conversion failed: {type(err).__name__}: {err}".lstrip("; ")
    return {"notebook": job.name, "status": status,
            "seconds": round(time.perf_counter() - start, 1), "attempts": attempts,
            "error": error, "html": html_name}


# ---------------------------------------------------------------------------------------------
# HTML of one notebook
# ---------------------------------------------------------------------------------------------

# <script src="https://..."></script> (or protocol-relative //...): require.js and MathJax from
# nbconvert's lab template and the MathJax tag plotly puts beside each figure.
_EXTERNAL_SCRIPT = re.compile(
    r"""<script\b[^>]*\bsrc\s*=\s*["']((?:https?:)?//[^"']*)["'][^>]*>\s*</script>""",
    re.IGNORECASE)


def strip_external_scripts(page: str) -> str:
    """Replace every ``<script src>`` that points at another host by an HTML comment.

    Reports must open offline. Nothing they show needs those scripts: plotly.js is inlined by
    plotly itself and does not need require.js, batch reports carry no live widgets, and
    MathJax only typesets LaTeX in markdown, which then shows as TeX source.
    """
    return _EXTERNAL_SCRIPT.sub(
        lambda m: f"<!-- seqtransfer: external script {html.escape(m.group(1))} removed "
                  "so that the report works offline -->", page)


def notebook_to_html(ipynb: str | Path, html_path: str | Path) -> Path:
    """Convert an executed notebook to a self-contained HTML report (nbconvert, lab template).

    External scripts are removed (``strip_external_scripts``), and so is the notebook's widget
    state, whose renderer the template would load from a CDN. The template's mermaid loader
    stays: it fetches nothing unless the notebook holds a mermaid diagram.

    Returns:
        ``html_path``.
    """
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    nb.metadata.pop("widgets", None)
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(
        nb, resources={"metadata": {"name": Path(ipynb).stem}})
    html_path = Path(html_path)
    html_path.write_text(strip_external_scripts(page), encoding="utf-8")
    return html_path


# ---------------------------------------------------------------------------------------------
# The batch
# ---------------------------------------------------------------------------------------------


def run_batch(names: Sequence[str] | None = None, budget: str = "quick",
              out: str | Path | None = None, jobs: int = 1, params: Mapping | None = None,
              device: str = "auto", timeout: float | None = None,
              notebooks_dir: str | Path | None = None,
              notebooks: Mapping[str, str | Path] | None = None) -> pd.DataFrame:
    """Execute notebooks with papermill and write their HTML reports, results and an index.

    Every notebook gets the parameters ``budget``, ``device``, ``interactive=False`` and
    ``params``; its kernel runs in the notebook's folder with plotly's renderer set to
    ``BATCH_RENDERER``. A notebook that fails is recorded with its error and the batch goes
    on; one that times out is retried once.

    Args:
        names: notebook names to run (``None``: all of ``notebooks``).
        budget: the size switch of every notebook, one of ``BUDGETS``.
        out: output folder (default ``reports/latest`` of the checkout); it receives
            ``<name>.ipynb``, ``<name>.html``, ``results.csv``, ``status.csv``, ``index.html``.
        jobs: notebooks run at once; above 1 they run in a process pool.
        params: further notebook parameters (not budget, device or interactive).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``, passed to the notebooks.
        timeout: per-cell timeout in seconds (default ``DEFAULT_TIMEOUTS[budget]``).
        notebooks_dir: folder of the notebooks (default ``notebooks/`` of the checkout).
        notebooks: name -> file mapping (default ``NOTEBOOKS``).

    Returns:
        The status table (``STATUS_COLUMNS``), one row per notebook, also in ``status.csv``.

    Raises:
        BatchError: bad arguments, before anything runs.
    """
    parameters = _batch_parameters(budget, device, params)
    selected = resolve_notebooks(names, notebooks, notebooks_dir)
    if jobs < 1:
        raise BatchError(f"jobs must be at least 1, got {jobs}")
    timeout = DEFAULT_TIMEOUTS[budget] if timeout is None else float(timeout)
    if timeout <= 0:
        raise BatchError(f"timeout must be positive, got {timeout:g}")
    out = Path(out) if out is not None else _project_path("reports", "latest")
    out.mkdir(parents=True, exist_ok=True)

    started = datetime.now().astimezone()
    todo = [_Job(name, src, out, parameters, timeout) for name, src in selected.items()]
    with _kernel_env(PLOTLY_RENDERER=BATCH_RENDERER):
        done = _run_jobs(todo, jobs)
    status = pd.DataFrame([done[job.name] for job in todo], columns=list(STATUS_COLUMNS))
    status.to_csv(out / "status.csv", index=False)

    results = collect_results(out, list(selected))
    results.to_csv(out / "results.csv", index=False)
    write_index(out, status, results, info={
        "budget": budget, "device": device,
        "started": started.strftime("%Y-%m-%d %H:%M %Z"),
        "took": f"{(datetime.now().astimezone() - started).total_seconds():.0f} s",
        "jobs": str(jobs), "per-cell timeout": f"{timeout:g} s",
        **({"params": ", ".join(f"{k}={v!r}" for k, v in params.items())} if params else {}),
    })
    return status


def _batch_parameters(budget: str, device: str, params: Mapping | None) -> dict:
    if budget not in BUDGETS:
        raise BatchError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if device not in DEVICES:
        raise BatchError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    params = dict(params or {})
    clash = sorted(set(params) & {"budget", "device", "interactive"})
    if clash:
        raise BatchError(f"params may not set {', '.join(clash)}: use the budget/device "
                         "arguments; batch runs are never interactive")
    return {"budget": budget, "device": device, "interactive": False, **params}


def _run_jobs(todo: list[_Job], jobs: int) -> dict[str, dict]:
    """Run the jobs in-process (``jobs == 1``) or in a pool; return name -> status row."""
    done = {}
    if jobs == 1:
        for job in todo:
            log.info("running %s ...", job.name)
            done[job.name] = _log_done(_run_one(job))
        return done
    # spawn, not fork: the parent may hold threads (zmq, pytest) that fork would copy half-way
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=context) as pool:
        log.info("running %s with %d workers ...", ", ".join(j.name for j in todo), jobs)
        futures = [pool.submit(_run_one, job) for job in todo]
        for future in as_completed(futures):
            row = _log_done(future.result())
            done[row["notebook"]] = row
    return done


def _log_done(row: dict) -> dict:
    log.info("%s: %s in %.1f s%s", row["notebook"], row["status"], row["seconds"],
             f" ({row['error']})" if row["error"] else "")
    return row


def collect_results(out: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """Concatenated records (``RESULT_COLUMNS``) of the executed ``out/<name>.ipynb`` files.

    A notebook that failed after recording still contributes what it recorded.
    """
    frames = [read_records(p) for p in (Path(out) / f"{n}.ipynb" for n in names) if p.exists()]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Leaderboard and index
# ---------------------------------------------------------------------------------------------

# t quantile 0.975 for 1..10 degrees of freedom; beyond, 1.96 + 2.4/df is within 0.01.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def _ci95(values: pd.Series) -> float:
    """Half-width of the 95% t-interval of the mean; NaN for a single value."""
    n = values.count()
    return _t975(n - 1) * values.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")


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


_METRIC_NAMES = {"ndcg": "NDCG", "hr": "HR", "mrr": "MRR"}

_INDEX_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222;
       padding: 0 1rem; }
h1 { margin-bottom: .2rem; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem .7rem; text-align: left;
         vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #e3f4e1; font-weight: bold; }
.ci { color: #777; font-size: .85em; }
.ok { color: #1a7f37; font-weight: bold; }
.failed, .timeout { color: #c62828; font-weight: bold; }
tr.bad td { background: #fdecea; }
td.error { color: #c62828; font-family: monospace; white-space: pre-wrap; max-width: 45rem; }
"""


def write_index(out: str | Path, status: pd.DataFrame, results: pd.DataFrame,
                info: Mapping[str, str] | None = None) -> Path:
    """Write ``out/index.html``: batch facts, notebook status and the leaderboard.

    The page needs nothing from the network: CSS is inline and plotly.js is inlined once for
    the leaderboard figure (left out when nothing was recorded).

    Args:
        out: the batch folder; links are relative to it.
        status: the status table (``STATUS_COLUMNS``).
        results: the recorded rows (``RESULT_COLUMNS``).
        info: label -> text shown under the title (budget, device, time, ...).

    Returns:
        The path of ``index.html``.
    """
    board = leaderboard(results)
    n_ok = int((status["status"] == "ok").sum())
    facts = [f"{n_ok} of {len(status)} notebooks ok"] + [
        f"{html.escape(k)} <b>{html.escape(str(v))}</b>" for k, v in (info or {}).items()]
    body = [
        "<h1>seqtransfer batch report</h1>",
        f"<p class='meta'>{' &middot; '.join(facts)}</p>",
        "<h2>Notebooks</h2>", _status_table(status),
        "<h2>Leaderboard</h2>",
        "<p>Test split, full ranking over all items with each user's training items masked; "
        "mean over seeds with the half-width of the 95% t-interval where there are several; "
        "best per column highlighted; sorted by NDCG@10 over all users.</p>",
    ]
    if board.empty:
        body.append("<p><b>No results were recorded.</b></p>")
    else:
        body += [_leaderboard_table(board), _leaderboard_figure(board).to_html(
            include_plotlyjs=True, full_html=False, config={"displaylogo": False})]
    body.append("<p>Raw data: <a href='results.csv'>results.csv</a>, "
                "<a href='status.csv'>status.csv</a>.</p>")
    page = ("<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            "<title>seqtransfer batch report</title>\n"
            f"<style>{_INDEX_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    path = Path(out) / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _status_table(status: pd.DataFrame) -> str:
    head = "<tr><th>notebook</th><th>status</th><th>time (s)</th><th>report</th><th>error</th></tr>"
    rows = []
    for r in status.itertuples(index=False):
        name = html.escape(r.notebook)
        links = [f"<a href='{html.escape(r.html)}'>HTML</a>"] if _present(r.html) else []
        links.append(f"<a href='{name}.ipynb'>ipynb</a>")
        bad = " class='bad'" if r.status != "ok" else ""
        retried = " (retried)" if r.attempts > 1 else ""
        rows.append(
            f"<tr{bad}><td>{name}</td><td class='{html.escape(r.status)}'>{html.escape(r.status)}"
            f"{retried}</td><td class='num'>{r.seconds:.1f}</td><td>{' '.join(links)}</td>"
            f"<td class='error'>{html.escape(r.error if _present(r.error) else '')}</td></tr>")
    return f"<table>\n{head}\n" + "\n".join(rows) + "\n</table>"


def _leaderboard_table(board: pd.DataFrame) -> str:
    value_cols = [c for c in board.columns if f"{c} ci95" in board.columns]
    best = {c: board[c].max() for c in value_cols}
    head = ("<tr><th>method</th><th>dataset</th><th>backbone</th><th>seeds</th>"
            + "".join(f"<th>{_column_title(c)}</th>" for c in value_cols) + "</tr>")
    rows = []
    for _, r in board.iterrows():
        cells = [f"<td>{html.escape(str(r[c]))}</td>" for c in ("method", "dataset", "backbone")]
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
    """Grouped bars: NDCG@k and HR@k side by side, one bar per user group, 95% error bars."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from .plots import GROUP_COLORS  # the group colours of every other figure

    labels = [f"{r.method} ({r.dataset}, {r.backbone})" for r in board.itertuples()]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"NDCG@{k}", f"HR@{k}"))
    for col, metric in enumerate(("ndcg", "hr"), start=1):
        for group in groups:
            name = f"{metric}@{k} {group}"
            fig.add_trace(go.Bar(
                x=labels, y=board[name], name=group, legendgroup=group, showlegend=col == 1,
                marker_color=GROUP_COLORS.get(group),
                error_y={"type": "data", "array": board[f"{name} ci95"], "visible": True}),
                row=1, col=col)
    fig.update_layout(barmode="group", height=480, template="plotly_white",
                      legend_title_text="users", margin={"t": 60, "b": 40})
    return fig


# ---------------------------------------------------------------------------------------------
# nbval reference copies
# ---------------------------------------------------------------------------------------------


def make_nbval_refs(names: Sequence[str] | None = None, dest: str | Path | None = None, *,
                    notebooks: Mapping[str, str | Path] | None = None,
                    notebooks_dir: str | Path | None = None,
                    timeout: float | None = None) -> list[Path]:
    """Re-make the nbval reference copies: each notebook executed at the smoke budget on CPU.

    The copies keep their outputs (nbval compares against them) and the papermill-injected
    parameters cell (so nbval's re-run is a smoke run too). Volatile metadata is stripped so
    that re-making them gives small diffs: per-cell ``papermill`` and ``execution`` timings,
    papermill's notebook-level paths and times (its parameters stay) and widget state; the
    injected cell gets a fixed id.

    Args:
        names: notebooks to run (``None``: all of ``notebooks``).
        dest: folder of the copies (default ``tests/notebooks`` of the checkout).
        notebooks, notebooks_dir: as for ``run_batch``.
        timeout: per-cell timeout in seconds (default ``DEFAULT_TIMEOUTS["smoke"]``).

    Returns:
        The written paths.

    Raises:
        RuntimeError: a notebook failed or timed out (its partial copy is left in ``dest``).
    """
    selected = resolve_notebooks(names, notebooks, notebooks_dir)
    dest = Path(dest) if dest is not None else _project_path("tests", "notebooks")
    dest.mkdir(parents=True, exist_ok=True)
    timeout = DEFAULT_TIMEOUTS["smoke"] if timeout is None else float(timeout)
    written = []
    with _kernel_env(PLOTLY_RENDERER=REFERENCE_RENDERER):
        for name, src in selected.items():
            target = dest / f"{name}.ipynb"
            status, error = _execute(src, target, REFERENCE_PARAMETERS, timeout)
            if status != "ok":
                raise RuntimeError(f"{name} {status}: {error}; partial copy in {target}")
            strip_volatile_metadata(target)
            written.append(target)
    return written


def strip_volatile_metadata(ipynb: str | Path) -> None:
    """Remove timings, paths and widget state from an executed notebook, in place."""
    nb = nbformat.read(str(ipynb), as_version=4)
    pm_meta = nb.metadata.pop("papermill", {})
    if "parameters" in pm_meta:
        nb.metadata["papermill"] = {"parameters": pm_meta["parameters"]}
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["id"] = "injected-parameters"  # papermill draws a random id on every run
    nbformat.write(nb, str(ipynb))
