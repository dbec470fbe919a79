"""The main job end to end: every real notebook through the batch runner at the smoke
budget, then the reports and the index opened in headless chromium."""
from __future__ import annotations

import pandas as pd
import pytest

from seqtransfer import report
from seqtransfer.browser import FIGURES_DIR, check_page, chromium, read_checks


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
    assert "baseline:sasrec joint" in set(board["method"])            # one backbone by default
    assert not board["method"].str.startswith("data").any()   # data stats never rank


@pytest.mark.browser
def test_reports_draw_their_figures_offline(smoke_batch, browser_ready):
    """Every figure of every report passed the browser check (seqtransfer.browser) while the
    batch ran, left a PNG, and shows in the index's gallery; the index itself draws too."""
    out, status = smoke_batch
    for name in ["index", *report.NOTEBOOKS]:
        page = out / f"{name}.html"
        # the folder's one plotly.js, not an inlined copy
        assert 'src="plotly.min.js"' in page.read_text() and "plotly.js v" not in page.read_text()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"batch folder {out}: {size / 2**20:.1f} MB")
    # one 4.6 MB plotly.js, the figure PNGs and each report's own figure data (06's histograms
    # are the largest, about 6 MB in HTML and ipynb): 17.6 MB for seven notebooks, measured.
    # Inlined, plotly.js alone would be 2 x 4.6 MB per notebook, 64 MB for seven
    assert size < 24 * 2**20
    checks = read_checks(out)
    assert [c["page"] for c in checks] == [f"{name}.html" for name in report.NOTEBOOKS]
    problems = [p for c in checks for p in c["problems"]]
    assert not problems, "\n".join(problems)
    index = (out / "index.html").read_text()
    for c in checks:
        assert c["figures"], f"{c['page']} has no figure"
        for fig in c["figures"]:
            assert (out / FIGURES_DIR / fig["png"]).stat().st_size > 5000
            assert f"src='{FIGURES_DIR}/{fig['png']}'" in index
    with chromium() as browser:
        page = check_page(browser, out / "index.html")
    assert page.figures and not page.problems, page.problems
