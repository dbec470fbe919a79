"""Progress of a batch: which cell and section a notebook is in, the bar and the log lines, and
papermill's cell hook in a real kernel."""
from __future__ import annotations

import io
import queue

import nbformat
import pytest

from seqtransfer import batch
from seqtransfer.progress import Progress, cell_position, cell_reporter

v4 = nbformat.v4


def notebook():
    return v4.new_notebook(cells=[
        v4.new_markdown_cell("# Title\n\nintro"),                 # 0
        v4.new_code_cell("x = 1"),                               # 1  code 1, setup
        v4.new_markdown_cell("Some text\n## 1. Train\nmore"),    # 2
        v4.new_code_cell("y = 2"),                               # 3  code 2, 1. Train
        v4.new_code_cell("z = 3"),                               # 4  code 3, 1. Train
        v4.new_markdown_cell("### 1.1 Detail"),                  # 5
        v4.new_code_cell("print(x + y + z)"),                    # 6  code 4, 1.1 Detail
    ])


@pytest.mark.unit
def test_cell_position_counts_code_cells_and_finds_the_section():
    nb = notebook()
    assert cell_position(nb, 1) == (1, 4, "setup")
    assert cell_position(nb, 3) == (2, 4, "1. Train")
    assert cell_position(nb, 4) == (3, 4, "1. Train")
    assert cell_position(nb, 6) == (4, 4, "1.1 Detail")


@pytest.mark.unit
def test_progress_log_lines_one_per_section(caplog):
    caplog.set_level("INFO", logger="seqtransfer.batch")
    events = queue.Queue()
    row = {"status": "ok", "seconds": 12.0, "error": ""}
    for e in [("a", "start", None, 100.0), ("a", "cell", (1, 4, "setup"), 101.0),
              ("a", "cell", (2, 4, "1. Train"), 103.0), ("a", "cell", (3, 4, "1. Train"), 104.0),
              ("b", "start", None, 104.0), ("a", "end", row, 112.0)]:
        events.put(e)
    with Progress(2, events, bar=False, tick=0.01) as progress:
        pass
    assert [r.getMessage() for r in caplog.records] == [
        "[0/2] a: started", "[0/2] a: setup (cell 1/4, 1 s)", "[0/2] a: 1. Train (cell 2/4, 3 s)",
        "[0/2] b: started", "[1/2] a: ok in 12.0 s"]
    assert progress.describe(now=110.0) == "b 6 s"     # b has not reached a cell yet


@pytest.mark.unit
def test_progress_bar_shows_each_running_notebook():
    events, out = queue.Queue(), io.StringIO()
    with Progress(3, events, bar=True, file=out, tick=0.01) as progress:
        for e in [("a", "start", None, 100.0), ("b", "start", None, 101.0),
                  ("a", "cell", (7, 18, "2. Results by user group"), 130.0)]:
            progress._handle(e)
        assert progress.describe(now=135.0) == "a cell 7/18 · 2. Results by user group · 35 s | b 34 s"
        progress._handle(("b", "end", {"status": "failed", "seconds": 3.0, "error": "boom"}, 136.0))
        progress._draw()
    text = out.getvalue()
    assert "notebooks 1/3" in text and "cell 7/18 · 2. Results by user group" in text
    assert "[1/3] b: failed in 3.0 s (boom)" in text


def test_papermill_hook_reports_every_code_cell(tmp_path):
    nb = notebook()
    nb.cells[1].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "t.ipynb"))
    events = queue.Queue()
    status, error = batch._execute(tmp_path / "t.ipynb", tmp_path / "out.ipynb", {"x": 5}, 60,
                                   on_cell=cell_reporter(events, "t"))
    assert (status, error) == ("ok", "")
    seen = []
    while not events.empty():
        name, kind, position, _ = events.get()
        assert (name, kind) == ("t", "cell")
        seen.append(position)
    # papermill injects a parameters cell after cell 1: five code cells in all, each reported once
    assert seen == [(1, 5, "setup"), (2, 5, "setup"), (3, 5, "1. Train"), (4, 5, "1. Train"),
                    (5, 5, "1.1 Detail")]
