"""The batch: papermill runs of the notebooks, their HTML reports, and the nbval references.

``run_batch`` executes notebooks with papermill (each in a process of its own, up to ``jobs``
at once; Ctrl-C stops them all and keeps what they ran), shows progress while they run
(``seqtransfer.progress``), converts each to an offline HTML report sharing one plotly.js
(``seqtransfer.pages``) and writes ``results.csv``, ``status.csv`` and ``index.html``
(``seqtransfer.index``). ``make_nbval_refs`` re-makes the smoke-budget reference
copies that nbval checks.

papermill and nbconvert are imported inside the functions that use them.
"""
from __future__ import annotations

import ast
import logging
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import nbformat
import pandas as pd

from .budget import BUDGETS as _BUDGET_SETTINGS
from .index import write_index
from .pages import notebook_to_html, share_plotlyjs, write_plotlyjs
from .browser import capture_batch, clear_figures
from .progress import ENGINE, Progress, cell_reporter, best_order, register_engine
from .record import RESULT_COLUMNS, read_payloads

log = logging.getLogger(__name__)

# The notebooks the batch runs, name (file stem) -> file in notebooks/. One explicit dict, no
# discovery: a notebook joins the batch when it is added here.
NOTEBOOKS: dict[str, str] = {
    "00_data": "00_data.ipynb",
    "01_backbones": "01_backbones.ipynb",
    "02_gradient_alignment": "02_gradient_alignment.ipynb",
    "03_intervened_network": "03_intervened_network.ipynb",
    "04_ant": "04_ant.ipynb",
    "05_metarec": "05_metarec.ipynb",
    "06_ecat": "06_ecat.ipynb",
}

BUDGETS = tuple(_BUDGET_SETTINGS)  # smoke, quick, full: the size switch of every notebook
DEVICES = ("auto", "cpu", "cuda")
# Per-cell execution timeout in seconds when none is given. papermill has none by default and
# a hung cell would stall the batch forever (DESIGN.md, toolchain facts).
DEFAULT_TIMEOUTS = {"smoke": 300.0, "quick": 3 * 3600.0, "full": 12 * 3600.0}

# What each notebook took at each budget on the reference machine (2 cores, ``--jobs 2``: one
# kernel thread each; fresh run cache), from ``status.csv`` of the runs the README reports. The
# batch starts them in the order that ends soonest on these (progress.best_order) when it runs
# notebooks in parallel, and its progress prints the time left from these, scaled by how the
# finished notebooks compare with theirs (the 60d60a3 batch). A budget with
# no entry (``full``: a GPU's figures are not ours) gets no estimate.
EXPECTED_SECONDS: dict[str, dict[str, float]] = {
    "quick": {"00_data": 14, "01_backbones": 8, "02_gradient_alignment": 666,
              "03_intervened_network": 355, "04_ant": 1353, "05_metarec": 873, "06_ecat": 1346},
}

STATUS_COLUMNS = ("notebook", "status", "seconds", "attempts", "error", "html")
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
    events: object = None         # queue for progress events (see seqtransfer.progress)
    kernel_dir: str | None = None  # where its kernel's socket-file folder goes (None: the temp dir)


def kernel_threads(jobs: int, cores: int | None = None) -> dict[str, str]:
    """Thread settings for each kernel when ``jobs`` notebooks run at once: every kernel gets its
    share of the cores (at least one), so parallel notebooks do not oversubscribe the CPU (two
    kernels each running two threads on two cores are slower than one thread each). PyTorch,
    OpenMP and MKL read these when a kernel starts. With one job nothing is set: a lone kernel
    uses every core, as PyTorch does by default. A local Ray that a kernel starts (executor
    "ray" without an address) gets the same share (``SEQTRANSFER_RAY_CPUS``)."""
    if jobs <= 1:
        return {}
    share = str(max(1, (cores or os.cpu_count() or 1) // jobs))
    return {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share, "SEQTRANSFER_RAY_CPUS": share}


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


# The kernel logs only errors: at its default level it warns on every start that it runs over
# TCP without encryption, which is true of every local Jupyter kernel and means nothing here.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]

# How batch kernels talk to the batch: "ipc" (Unix socket files) where the OS has them, else
# Jupyter's default "tcp". Over TCP, jupyter_client picks five free ports and the kernel binds them
# a moment later; with two kernels starting at once, the first kernel's client connections take
# ephemeral ports that can be exactly those, and the second kernel dies with "Address already in
# use" (it failed CI once, on 00_data). Socket files in a folder of the kernel's own cannot collide,
# and the kernel's five channels then listen on no network port. (ipykernel still binds one
# loopback port of its own for subprocess output, with pyzmq's bind_to_random_port, which binds
# and retries in one step and so has no such race.)
KERNEL_TRANSPORT = "ipc" if os.name == "posix" else "tcp"


# a Unix socket path holds at most 104 bytes on macOS, 108 on Linux; a longer temp folder
# (an unusual TMPDIR) falls back to TCP
MAX_SOCKET_PATH = 100


KERNEL_PID_FILE = "kernel.pid"   # in a kernel's folder: its process id, for stopping it (_stop)


@contextmanager
def _kernel_manager(transport: str = KERNEL_TRANSPORT, parent: str | None = None) -> Iterator[type]:
    """A kernel manager class for one notebook run, with a new folder under ``parent`` (default:
    the temp folder) that is removed when the block ends. The kernel's connection file is there,
    it writes its process id there (``KERNEL_PID_FILE``) once started, and with
    ``transport="ipc"`` its sockets are files there
    (jupyter_client's own default would be ``kernel-ipc-N`` relative to each process's working
    folder, shared by every kernel started there)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    if transport not in ("ipc", "tcp"):
        raise BatchError(f"kernel transport must be 'ipc' or 'tcp', got {transport!r}")
    folder = tempfile.mkdtemp(prefix="stk-", dir=parent)
    if len(os.path.join(folder, "k-99").encode()) > MAX_SOCKET_PATH:
        transport = "tcp"

    class _BatchKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return transport

        @default("ip")
        def _default_ip(self):
            return os.path.join(folder, "k") if transport == "ipc" else super()._ip_default()

        @default("connection_file")   # not a tmpXXXX.json in the temp folder, which a killed
        def _default_connection_file(self):   # batch would leave behind
            return os.path.join(folder, "kernel.json")

        async def _async_post_start_kernel(self, **kwargs):
            await super()._async_post_start_kernel(**kwargs)
            pid = getattr(self.provisioner, "pid", None)
            if pid:
                Path(folder, KERNEL_PID_FILE).write_text(str(pid))

    try:
        yield _BatchKernelManager
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _execute(src: Path, dst: Path, parameters: dict, timeout: float,
             on_cell=None, kernel_dir: str | None = None) -> tuple[str, str]:
    """Run ``src`` into ``dst`` with papermill; return (status, error), status ok/failed/timeout.
    ``on_cell(nb, cell_index)`` is called as each cell starts."""
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError

    register_engine()
    try:
        with _kernel_manager(parent=kernel_dir) as manager:
            pm.execute_notebook(str(src), str(dst), parameters=parameters, kernel_name="python3",
                                cwd=str(src.parent), execution_timeout=timeout,
                                progress_bar=False, log_output=False, engine_name=ENGINE,
                                on_cell=on_cell, extra_arguments=KERNEL_ARGUMENTS,
                                kernel_manager_class=manager)
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
    """Execute one notebook (retrying once after a timeout), let it share the folder's plotly.js
    and convert it to HTML; report start, cells and end on ``job.events``."""
    ipynb = job.out_dir / f"{job.name}.ipynb"
    start = time.perf_counter()
    on_cell = None
    if job.events is not None:
        job.events.put((job.name, "start", None, time.time()))
        on_cell = cell_reporter(job.events, job.name)
    for attempts in (1, 2):
        status, error = _execute(job.src, ipynb, job.parameters, job.timeout, on_cell, job.kernel_dir)
        if status != "timeout":
            break
    html_name, error = _report(job, error)
    row = {"notebook": job.name, "status": status,
           "seconds": round(time.perf_counter() - start, 1), "attempts": attempts,
           "error": error, "html": html_name}
    if job.events is not None:
        job.events.put((job.name, "end", row, time.time()))
    return row


def _report(job: _Job, error: str) -> tuple[str, str]:
    """The HTML report of ``job``'s executed notebook, as far as it ran: (its file name, or ""
    without one; ``error`` with a failed conversion added)."""
    ipynb = job.out_dir / f"{job.name}.ipynb"
    html_path = job.out_dir / f"{job.name}.html"
    if not ipynb.exists():
        return "", error
    try:
        share_plotlyjs(ipynb)
        notebook_to_html(ipynb, html_path)
        return html_path.name, error
    except Exception as err:  # a report that cannot be rendered must not stop the batch
        return "", f"{error}; HTML conversion failed: {type(err).__name__}: {err}".lstrip("; ")


def _worker(job: _Job, results) -> None:
    """A notebook in a process of its own (``_run_jobs``): its status row goes on ``results``.

    The process leaves the batch's process group, so a terminal's Ctrl-C reaches the batch
    process alone, which stops this notebook by stopping its kernel (``_stop``); the notebook then
    ends as papermill ends one whose kernel died, its output notebook written whole. Should the
    batch process die without doing so, this one exits too (its kernel follows: ipykernel
    watches its parent)."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    _exit_with_parent(job.kernel_dir)
    results.put(_run_one(job))


def _exit_with_parent(leftover: str | None = None, every: float = 1.0) -> None:
    """A daemon thread that ends this process once its parent has gone, removing ``leftover``
    first (the kernels' socket folder, which a killed batch cannot remove itself)."""
    import threading

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        if leftover:
            shutil.rmtree(leftover, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="seqtransfer-parent-watch").start()


# ---------------------------------------------------------------------------------------------
# The batch
# ---------------------------------------------------------------------------------------------


def run_batch(names: Sequence[str] | None = None, budget: str = "quick",
              out: str | Path | None = None, jobs: int = 1, params: Mapping | None = None,
              device: str = "auto", timeout: float | None = None,
              notebooks_dir: str | Path | None = None,
              notebooks: Mapping[str, str | Path] | None = None,
              bar: bool | None = None) -> pd.DataFrame:
    """Execute notebooks with papermill and write their HTML reports, results and an index.

    Every notebook gets the parameters ``budget``, ``device``, ``interactive=False`` and those
    of ``params`` its parameters cell declares (a name no selected notebook declares is an
    error, before anything runs); its kernel runs in the notebook's folder with plotly's
    renderer set to ``BATCH_RENDERER``. A notebook that fails is recorded with its error and the batch goes
    on; one that times out is retried once. While they run, progress goes to stderr: a bar
    over the notebooks with each running notebook's cell, section and elapsed time on a
    terminal, else log lines of the ``seqtransfer.batch`` logger (``seqtransfer.progress``).
    The reports and the index share one ``plotly.min.js`` in ``out``.

    Args:
        names: notebook names to run (``None``: all of ``notebooks``).
        budget: the size switch of every notebook, one of ``BUDGETS``.
        out: output folder (default ``reports/latest`` of the checkout); it receives
            ``<name>.ipynb``, ``<name>.html``, ``results.csv``, ``status.csv``, ``index.html``.
        jobs: notebooks run at once, each in a process of its own (started by spawning, so a
            script that calls this needs Python's ``if __name__ == "__main__":`` guard).
        params: further notebook parameters (not budget, device or interactive).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``, passed to the notebooks.
        timeout: per-cell timeout in seconds (default ``DEFAULT_TIMEOUTS[budget]``).
        notebooks_dir: folder of the notebooks (default ``notebooks/`` of the checkout).
        notebooks: name -> file mapping (default ``NOTEBOOKS``).
        bar: draw a progress bar (``None``: when stderr is a terminal) or log lines.

    Returns:
        The status table (``STATUS_COLUMNS``), one row per notebook, also in ``status.csv``.

    Raises:
        BatchError: bad arguments, before anything runs.
        BatchInterrupted: Ctrl-C or SIGTERM stopped it; status.csv, results.csv and the index
            are written first (the figures are not checked, or, stopped during their check,
            only some), and the exception has the status.
    """
    parameters = _batch_parameters(budget, device, params)
    selected = resolve_notebooks(names, notebooks, notebooks_dir)
    if jobs < 1:
        raise BatchError(f"jobs must be at least 1, got {jobs}")
    timeout = DEFAULT_TIMEOUTS[budget] if timeout is None else float(timeout)
    if timeout <= 0:
        raise BatchError(f"timeout must be positive, got {timeout:g}")
    declared = {name: notebook_parameters(src) for name, src in selected.items()}
    unknown = [p for p in (params or {}) if not any(p in d for d in declared.values())]
    if unknown:
        raise BatchError(f"no selected notebook has the parameter(s) {', '.join(unknown)}; their "
                         f"parameters are {', '.join(sorted(set().union(*declared.values())))}")
    out = Path(out) if out is not None else _project_path("reports", "latest")
    out.mkdir(parents=True, exist_ok=True)

    started = datetime.now().astimezone()
    todo = [_Job(name, src, out, _own_parameters(parameters, declared[name]), timeout)
            for name, src in selected.items()]
    for name in selected:   # never report a previous run's output as this one's (nor collect
        for stale in (out / f"{name}.ipynb", out / f"{name}.html"):   # an unstarted one's results)
            stale.unlink(missing_ok=True)
    clear_figures(out, list(selected))   # nor its figure gallery, should this one's check not run
    with _kernel_env(PLOTLY_RENDERER=BATCH_RENDERER, **kernel_threads(jobs)):
        done, interrupted = _run_jobs(todo, jobs, bar, EXPECTED_SECONDS.get(budget))
    status = pd.DataFrame([done[job.name] for job in todo], columns=list(STATUS_COLUMNS))
    status.to_csv(out / "status.csv", index=False)

    results = collect_results(out, list(selected))
    results.to_csv(out / "results.csv", index=False)
    # the pages load the folder's one plotly.js: it must be there before anything opens them
    write_plotlyjs(out)
    # every figure checked in headless chromium, a PNG each in out/figures/ (seqtransfer.browser);
    # one log line and nothing else where playwright or chromium is missing. Not after Ctrl-C:
    # whoever pressed it wants the batch to end now; Ctrl-C during the check ends the check, and
    # the index is still written
    stopped = "while notebooks ran; the figures were not checked" if interrupted else ""
    if not interrupted:
        try:
            with _terminate_as_interrupt():
                capture_batch(out, list(selected))
        except KeyboardInterrupt:
            stopped = "during the figure check, which lists the pages it checked"
    write_index(out, status, results, verdicts=collect_verdicts(out, list(selected)),
                capped=collect_capped(out, list(selected)),
                comparisons=collect_comparisons(out, list(selected)), info={
        "budget": budget, "device": device,
        "started": started.strftime("%Y-%m-%d %H:%M %Z"),
        "took": f"{(datetime.now().astimezone() - started).total_seconds():.0f} s",
        "jobs": str(jobs), "per-cell timeout": f"{timeout:g} s",
        **({"params": ", ".join(f"{k}={v!r}" for k, v in params.items())} if params else {}),
        **({"interrupted": f"yes, by Ctrl-C or SIGTERM {stopped}"} if stopped else {}),
    })
    if stopped:
        raise BatchInterrupted(status, out)
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


def notebook_parameters(src: str | Path) -> set[str]:
    """The names the notebook's cell tagged ``parameters`` assigns (empty without one)."""
    nb = nbformat.read(str(src), as_version=4)
    names = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError:
                continue
            names |= {t.id for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
                      for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                      if isinstance(t, ast.Name)}
    return names


def _own_parameters(parameters: dict, declared: set[str]) -> dict:
    """The batch parameters a notebook gets: budget, device and interactive always, the others
    where its parameters cell declares them (``-p cache_runs False`` skips the data notebook,
    which trains nothing, instead of papermill warning about an unknown parameter)."""
    return {k: v for k, v in parameters.items()
            if k in ("budget", "device", "interactive") or k in declared}


def schedule(names: list[str], jobs: int, expected: dict[str, float] | None) -> list[str]:
    """The order the notebooks start in: as given on one job (a reader's order, and one job
    takes the same time in any order); on more, the order that ends soonest on the expected
    seconds (``progress.best_order``: the longest first unless another order ends sooner)."""
    return best_order(list(names), expected, jobs) if jobs > 1 and expected else list(names)


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the batch. The notebooks that had finished keep their
    reports; ``status`` (also in ``status.csv`` and the index) says which were stopped
    ("interrupted", with a report of the cells they ran) and which never started ("not
    started"). Finished model runs are in the run cache, so running the batch again continues."""

    def __init__(self, status: pd.DataFrame, out: Path):
        super().__init__(f"batch interrupted; reports so far in {out}")
        self.status, self.out = status, out


# how long a stopped notebook's process may take to shut its kernel down before it is killed
# (its kernel then exits on its own: ipykernel polls for its parent)
STOP_GRACE_SECONDS = 10.0


def _run_jobs(todo: list[_Job], jobs: int, bar: bool | None = None,
              expected: dict[str, float] | None = None) -> tuple[dict[str, dict], bool]:
    """Run the jobs, up to ``jobs`` at once, each in a process of its own (in their order on
    one job, the order that ends soonest on ``expected`` on more), drawing their progress and,
    with ``expected``, the batch's time left. Return (name -> status row, interrupted).

    On Ctrl-C or SIGTERM no further notebook starts and every running one is stopped
    (``_stop``: its kernel first, then, after ``STOP_GRACE_SECONDS``, its process); its row says
    "interrupted", with a report of the cells it ran. A process that dies without a row (killed
    from outside, out of memory) is "failed"."""
    done: dict[str, dict] = {}
    names = schedule([job.name for job in todo], jobs, expected)
    waiting = sorted(todo, key=lambda job: names.index(job.name))
    order = names if expected else None
    track = {"order": order, "expected": expected, "jobs": min(jobs, len(todo))}
    # spawn, not fork: the parent may hold threads (zmq, pytest) that fork would copy half-way
    context = multiprocessing.get_context("spawn")
    sockets = tempfile.mkdtemp(prefix="stk-")   # the kernels' socket folders, whatever happens
    running: dict[str, tuple[_Job, multiprocessing.process.BaseProcess, float]] = {}
    interrupted = False
    try:
        with _terminate_as_interrupt():
            # process queues, not a manager's: no server process to outlive a killed batch, and
            # no proxy connection that Ctrl-C could leave half-read
            events, results = context.Queue(), context.Queue()
            with Progress(len(todo), events, bar=bar, **track) as progress:
                try:
                    while waiting or running:
                        while waiting and len(running) < jobs:
                            job = replace(waiting.pop(0), events=events, kernel_dir=sockets)
                            process = context.Process(target=_worker, args=(job, results),
                                                      name=f"seqtransfer-{job.name}")
                            process.start()
                            running[job.name] = (job, process, time.perf_counter())
                        _collect(results, running, done, events)
                except KeyboardInterrupt:
                    interrupted = True
                    progress.interrupt(list(running))
                    _stop(running, done, sockets)
                    for job in waiting:
                        done[job.name] = _row_without_worker(job, "not started", None,
                                                             "the batch was interrupted first")
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    return done, interrupted


def _collect(results, running: dict, done: dict, events) -> None:
    """Wait up to a second for a finished notebook's row and record it; a process that died
    without one is recorded as failed."""
    try:
        row = results.get(timeout=1.0)
    except queue.Empty:
        dead = [name for name, (_, process, _) in running.items() if not process.is_alive()]
        if not dead:
            return
        try:     # a row put just before its process ended may have arrived since
            row = results.get(timeout=1.0)
        except queue.Empty:
            for name in dead:
                job, process, start = running.pop(name)
                process.join()
                done[name] = _row_without_worker(job, "failed", start,
                                                 f"the process running it died (exit code {process.exitcode})")
                events.put((name, "end", done[name], time.time()))
            return
    done[row["notebook"]] = row
    _, process, _ = running.pop(row["notebook"])
    process.join()


def _stop(running: dict, done: dict, sockets: str) -> None:
    """Stop every running notebook and record it as interrupted, with a report of the cells it
    ran: its kernel gets SIGTERM (its process group: the kernel's own children too), its
    process then ends the notebook and writes it out; a process still running after
    ``STOP_GRACE_SECONDS`` is killed, and so is its kernel."""
    _signal_kernels(sockets, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for _, process, _ in running.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
    _signal_kernels(sockets, getattr(signal, "SIGKILL", signal.SIGTERM))
    for name, (job, _, start) in running.items():
        done[name] = _row_without_worker(job, "interrupted", start, "stopped by Ctrl-C or SIGTERM")
    running.clear()


def _row_without_worker(job: _Job, status: str, start: float | None, error: str) -> dict:
    """The status row the batch writes itself for a notebook whose process gave none: stopped,
    dead, or never started (``start`` None), with a report of the cells it ran."""
    if start is None:
        return {"notebook": job.name, "status": status, "seconds": 0.0, "attempts": 0,
                "error": error, "html": ""}
    html_name, error = _report(job, error)
    return {"notebook": job.name, "status": status, "seconds": round(time.perf_counter() - start, 1),
            "attempts": 1, "error": error, "html": html_name}


def _signal_kernels(sockets: str, signum: int) -> None:
    """Send ``signum`` to every kernel with a process-id file under ``sockets`` (each in a session
    of its own: to its process group where the OS has them)."""
    for pid_file in Path(sockets).glob(f"*/{KERNEL_PID_FILE}"):
        try:
            pid = int(pid_file.read_text())
            if hasattr(os, "killpg"):
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except (OSError, ValueError):   # gone already, or a half-written file
            pass


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the batch process while the block runs (where
    signals can be handled: the main thread), so ``kill`` stops the batch as Ctrl-C does."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def collect_results(out: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """Concatenated records (``RESULT_COLUMNS``) of the executed ``out/<name>.ipynb`` files.

    A notebook that failed after recording still contributes what it recorded.
    """
    frames = [pd.DataFrame([r for p in read_payloads(path) for r in p["rows"]], columns=list(RESULT_COLUMNS))
              for path in (Path(out) / f"{n}.ipynb" for n in names) if path.exists()]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=list(RESULT_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def collect_verdicts(out: str | Path, names: Sequence[str]) -> dict[str, list[str]]:
    """Notebook name -> the verdict sentences its records carry (executed ``out/<name>.ipynb``)."""
    return {n: [v for p in read_payloads(path) for v in p["verdicts"]]
            for n, path in ((n, Path(out) / f"{n}.ipynb") for n in names) if path.exists()}


def collect_comparisons(out: str | Path, names: Sequence[str]) -> pd.DataFrame:
    """Every recorded ``methods.compare`` row (paired-bootstrap intervals), with ``notebook``."""
    rows = [{"notebook": n, **c} for n in names if (Path(out) / f"{n}.ipynb").exists()
            for p in read_payloads(Path(out) / f"{n}.ipynb") for c in p["comparisons"]]
    return pd.DataFrame(rows)


def collect_capped(out: str | Path, names: Sequence[str]) -> dict[str, str]:
    """Variant -> why its training stopped, for every variant a record lists as stopped by a cap
    (``extra["runs"]``, from ``methods.run_facts``) rather than by early stopping."""
    capped: dict[str, str] = {}
    for n in names:
        path = Path(out) / f"{n}.ipynb"
        for p in read_payloads(path) if path.exists() else []:
            for variant, facts in (p.get("extra") or {}).get("runs", {}).items():
                why = sorted({w for w in facts.get("stopped", {}).values() if w != "early stop"})
                if why:
                    capped[variant] = "; ".join(why)
    return capped


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
            own = _own_parameters(REFERENCE_PARAMETERS, notebook_parameters(src))
            status, error = _execute(src, target, own, timeout)
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
