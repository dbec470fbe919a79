"""Shared fixtures: a tiny interactions file, a headless browser, and the notebook marker on
nbval's items."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items):
    """nbval collects ``tests/notebooks/*.ipynb`` itself; tag those items as notebook tests so
    ``-m 'not notebook'`` leaves them out like the papermill ones."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)


@pytest.fixture
def amazon_scientific() -> Path:
    """The Amazon Scientific folder where the library finds it (``../shared`` beside the
    project); the test is skipped when it is not there."""
    from seqtransfer.data.atomic import resolve_atomic
    from seqtransfer.data.errors import DataError
    try:
        return resolve_atomic("amazon-scientific")
    except DataError as err:
        pytest.skip(str(err))


@pytest.fixture
def smoke_notebook(tmp_path):
    """Run a registered notebook through papermill at the smoke budget (the nbval reference
    parameters plus ``extra``) into ``tmp_path``; returns the executed path and its records."""
    import papermill as pm

    from seqtransfer import report

    def run(name: str, **extra):
        out = tmp_path / f"{name}.ipynb"
        src = Path(__file__).resolve().parents[1] / "notebooks" / report.NOTEBOOKS[name]
        pm.execute_notebook(str(src), str(out), kernel_name="python3", progress_bar=False,
                            parameters={**report.REFERENCE_PARAMETERS, **extra}, execution_timeout=600)
        return out, report.read_records(out)
    return run


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory) -> Path:
    """A user,item,timestamp CSV: 16 users with 4, 7, 10 or 13 interactions over 17 items
    (distinct items per user)."""
    rows = [f"u{u},i{(3 * u + t) % 17},{100 * t + u}" for u in range(16) for t in range(4 + 3 * (u % 4))]
    path = tmp_path_factory.mktemp("toy") / "inter.csv"
    path.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture
def chromium_dom(tmp_path_factory):
    """``chromium_dom(path)``: the DOM of an HTML file after headless chromium ran its scripts
    (offline, 5 s of virtual time).

    Skips when chromium is missing, unless SEQTRANSFER_REQUIRE_BROWSER=1 makes that a failure;
    checked before the test body so that a skip costs no notebook runs.
    """
    exe = shutil.which("chromium")
    if exe is None:
        reason = "chromium not found on PATH (Debian package `chromium`)"
        if os.environ.get("SEQTRANSFER_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and SEQTRANSFER_REQUIRE_BROWSER=1")
        pytest.skip(reason + "; set SEQTRANSFER_REQUIRE_BROWSER=1 to fail instead")

    def dom(path: Path) -> str:
        profile = tmp_path_factory.mktemp("chromium-profile")
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
               "--dump-dom", path.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    return dom


@pytest.fixture
def browser_ready():
    """Skips a test when playwright or chromium is missing (``seqtransfer.browser``), unless
    SEQTRANSFER_REQUIRE_BROWSER=1 makes that a failure; checked before the test body runs."""
    from seqtransfer.browser import browser_missing

    reason = browser_missing()
    if reason is not None:
        if os.environ.get("SEQTRANSFER_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " and SEQTRANSFER_REQUIRE_BROWSER=1")
        pytest.skip(reason + "; set SEQTRANSFER_REQUIRE_BROWSER=1 to fail instead")
