"""The notebooks as a researcher meets them: a real JupyterLab server on the loopback, driven
by headless Chromium (playwright).

One server for the module: 127.0.0.1, a free port, a random token, its own config, runtime
and data folders, serving a temporary folder that holds parameterized copies of the notebooks
(smoke budget, ml-100k, ``interactive = True``). Each test opens a notebook, runs all cells
from the Run menu, saves, and checks the saved file (no error output, no widget left behind by
a progress bar) and the page (every Plotly figure drew, see ``seqtransfer.browser``). The
server is stopped by its process group id.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from seqtransfer import browser, report

ROOT = Path(__file__).resolve().parents[1]
WIDGET = "application/vnd.jupyter.widget-view+json"
PARAMETERS = {"budget": "smoke", "dataset": "ml-100k", "interactive": True, "device": "cpu"}
RUN_TIMEOUT_S = 150   # one notebook, all cells, at the smoke budget

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy(name: str, folder: Path, **extra) -> str:
    """A parameterized copy of notebook ``name`` in ``folder``, outputs empty; its file name."""
    nb = load_notebook_node(str(ROOT / "notebooks" / report.NOTEBOOKS[name]))  # with papermill's metadata
    nb = parameterize_notebook(nb, {**PARAMETERS, **extra})
    nbformat.write(nb, str(folder / report.NOTEBOOKS[name]))
    return report.NOTEBOOKS[name]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(base url, token, served folder) of a running JupyterLab; stopped after the module."""
    from seqtransfer.browser import browser_missing

    reason = browser_missing()
    if reason is not None:  # the browser_ready fixture decides skip or fail; start nothing
        yield None
        return
    home = tmp_path_factory.mktemp("jupyter")
    folder = home / "notebooks"
    folder.mkdir()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_DATA_DIR": str(home / "data"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "lib"), os.environ.get("PYTHONPATH")]))}
    port, token = _free_port(), secrets.token_hex(16)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if os.geteuid() == 0 else [])],   # CI containers run as root
        env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("jupyter lab did not start:\n" + (home / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token, folder
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the kernels it started: its process group, by id."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:   # already gone
            pass
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def chrome(lab):
    if lab is None:
        yield None
        return
    with browser.chromium() as b:
        yield b


def _run_all(chrome, lab, name: str):
    """Open ``name`` in JupyterLab, Run > Run All Cells, wait for the kernel, save.

    Returns (page, saved notebook, seconds the run took); the caller closes the page."""
    base, token, folder = lab
    page = chrome.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{base}/lab/tree/{name}?token={token}&reset", wait_until="domcontentloaded")
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=60_000)
    _wait_for_kernel(base, token, name)
    page.wait_for_function(_KERNEL_IDLE, timeout=60_000)
    page.locator(".jp-Notebook").first.click()   # focus the notebook, not the launcher
    t0 = time.monotonic()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(_STARTED, timeout=20_000)
    page.wait_for_function(_ALL_RAN, timeout=RUN_TIMEOUT_S * 1000, polling=500)
    took = time.monotonic() - t0
    page.locator(".jp-Notebook").first.click()
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=30_000)
    saved = nbformat.read(str(folder / name), as_version=4)
    assert not errors, errors
    return page, saved, took


def _wait_for_kernel(base: str, token: str, name: str, timeout: float = 60) -> None:
    """Until the server says the notebook's kernel is idle (the page's own indicator reads
    idle before the kernel is connected, and Run All then does nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=5) as r:
            sessions = json.load(r)
        if any(s["path"].endswith(name) and s["kernel"]["execution_state"] == "idle" for s in sessions):
            time.sleep(1)   # the page connects to the kernel after the server reports it
            return
        time.sleep(0.5)
    raise TimeoutError(f"no idle kernel for {name} after {timeout:g} s")


# some code cell is running or has run
_STARTED = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
  .some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))"""
# every code cell has run (prompt "[n]:") and the kernel is idle again
_KERNEL_IDLE = """() => { const s = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return s && s.getAttribute('data-status') === 'idle'; }"""
_ALL_RAN = """() => { const p = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
  .map(e => e.textContent.trim());
  const s = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return p.length > 0 && p.every(t => /^\\[\\d+\\]:$/.test(t)) && s && s.getAttribute('data-status') === 'idle'; }"""


def _errors(nb) -> list[str]:
    return [f"cell {i}: {o.get('ename')}: {o.get('evalue')}" for i, c in enumerate(nb.cells)
            if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def _page_text_problems(page) -> list[str]:
    text = page.locator(".jp-Notebook").first.inner_text()
    return [bad for bad in ("Error displaying widget", "model not found", "Traceback") if bad in text]


def _figures(page) -> list[dict]:
    """Every Plotly figure on the page, inspected as in the report check."""
    graphs = page.locator(".jp-Notebook .js-plotly-plot")
    return [browser.inspect(graphs.nth(i)) for i in range(graphs.count())]


def _head_label(page) -> str:
    """The head cut-off label of the explorer's histogram (the widget's first figure)."""
    return page.locator(".widget-interact .js-plotly-plot").first.evaluate(
        "gd => (gd._fullLayout.annotations || []).map(a => a.text).join(' | ')")


def test_00_runs_in_jupyterlab_and_its_slider_redraws(lab, chrome, browser_ready, tmp_path):
    t0 = time.monotonic()
    page, saved, took = _run_all(chrome, lab, _copy("00_data", lab[2]))
    try:
        assert _errors(saved) == []
        assert _page_text_problems(page) == []
        figures = _figures(page)
        assert len(figures) >= 5            # 3 in the notebook, 2 in the explorer
        problems = [f"figure {i + 1} ({f['title']}): {p}" for i, f in enumerate(figures) for p in browser.judge(f)]
        assert problems == [], problems
        before = _head_label(page)
        handle = page.locator(".widget-interact .widget-slider", has_text="head share").locator(".noUi-handle")
        handle.focus()
        page.keyboard.press("ArrowRight")     # head share 20% -> 25%
        page.wait_for_function(
            """before => { const gd = document.querySelector('.widget-interact .js-plotly-plot');
                return gd && gd._fullLayout && (gd._fullLayout.annotations || []).map(a => a.text).join(' | ') !== before; }""",
            arg=before, timeout=30_000)
        after = _head_label(page)
        assert after != before and "head: >" in after
        assert "25%" in page.locator(".widget-interact .widget-slider", has_text="head share").inner_text()
        page.locator(".widget-interact").first.screenshot(path=str(tmp_path / "explorer.png"))
        # the saved file keeps a static copy of the explorer beside the widget view (a notebook
        # reopened without its kernel cannot draw the widget): its table and both figures
        cell = next(c for c in saved.cells if c.cell_type == "code" and "group_explorer(" in c.source)
        kinds = [k for o in cell.outputs for k in o.get("data", {})]
        assert WIDGET in kinds and kinds.count("application/vnd.plotly.v1+json") >= 2 and "text/html" in kinds
        assert any("Static copy of the explorer" in o.get("data", {}).get("text/markdown", "") for o in cell.outputs)
    finally:
        page.close()
    print(f"00 in JupyterLab: all cells {took:.0f} s, test {time.monotonic() - t0:.0f} s")
    assert time.monotonic() - t0 < 180


def test_01_runs_in_jupyterlab_and_every_figure_draws(lab, chrome, browser_ready):
    t0 = time.monotonic()
    # both backbones: the conflict heatmap then has panels with different layer lists
    page, saved, took = _run_all(chrome, lab, _copy("01_backbones", lab[2], cache_runs=False,
                                                    backbones=["sasrec", "gru4rec"]))
    try:
        assert _errors(saved) == []
        assert _page_text_problems(page) == []
        figures = _figures(page)
        assert len(figures) == 6            # group bars x4, training curves, conflict heatmap
        problems = [f"figure {i + 1} ({f['title']}): {p}" for i, f in enumerate(figures) for p in browser.judge(f)]
        assert problems == [], problems
        # progress bars left lines of text, no widget views (reopened: "model not found")
        outputs = [o for c in saved.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if WIDGET in o.get("data", {})]
        lines = "".join(o.get("data", {}).get("text/plain", "") + o.get("text", "") for o in outputs)
        assert lines.count("training: ") >= 4 and "steps in" in lines
    finally:
        page.close()
    print(f"01 in JupyterLab: all cells {took:.0f} s, test {time.monotonic() - t0:.0f} s")
    assert time.monotonic() - t0 < 180
