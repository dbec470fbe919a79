"""The main job end to end: every real notebook through the batch runner at the smoke
budget, then the reports and the index opened in headless chromium."""
from __future__ import annotations

import pandas as pd
import pytest

from seqtransfer import report


@pytest.fixture(scope="module")
def smoke_batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    status = report.run_batch(budget="smoke", out=out, jobs=2, device="cpu",
                              params={"cache_runs": False})
    return out, status


@pytest.mark.notebook
def test_every_notebook_runs_and_records(smoke_batch):
    out, status = smoke_batch
    failed = status[status["status"] != "ok"]
    assert failed.empty, failed[["notebook", "status", "error"]].to_string()
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == list(report.RESULT_COLUMNS)
    assert set(results["notebook"]) == set(report.NOTEBOOKS)
    ranking = results[results["metric"].isin(["ndcg", "hr"])]
    assert ranking["value"].between(0, 1).all()
    index = (out / "index.html").read_text()
    for name in report.NOTEBOOKS:
        assert f"href='{name}.html'" in index
    board = report.leaderboard(results)
    assert {"baseline:sasrec joint", "baseline:gru4rec joint"} <= set(board["method"])
    assert not board["method"].str.startswith("data").any()   # data stats never rank


@pytest.mark.browser
def test_reports_draw_their_figures_offline(smoke_batch, chromium_dom):
    out, status = smoke_batch
    for name in ["index", *report.NOTEBOOKS]:
        page = out / f"{name}.html"
        # the folder's one plotly.js, not an inlined copy
        assert 'src="plotly.min.js"' in page.read_text() and "plotly.js v" not in page.read_text()
        dom = chromium_dom(page)
        assert 'class="main-svg"' in dom, f"plotly drew no figure in {name}.html"
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"batch folder {out}: {size / 2**20:.1f} MB")
    # one 4.6 MB plotly.js for the folder (7.8 MB in all at the smoke budget, measured);
    # before, every report and every executed .ipynb inlined its own ~5 MB copy
    assert size < 12 * 2**20
