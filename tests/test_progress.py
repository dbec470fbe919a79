"""Progress of a batch: which cell and section a notebook is in, the bar and the log lines, and
papermill's cell hook in a real kernel."""
from __future__ import annotations

import io
import queue

import nbformat
import pytest

from seqtransfer import batch, progress
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
def test_a_notebook_the_batch_stops_is_logged_interrupted_not_failed(caplog):
    """After Ctrl-C the batch stops the running kernels; their notebook processes see a dead
    kernel and report a failure, which the log calls what it is. A notebook that ended well
    in the meantime keeps its own status, and no time left is estimated for a batch that ends."""
    import time

    caplog.set_level("INFO", logger="seqtransfer.batch")
    events = queue.Queue()
    dead = {"status": "failed", "seconds": 30.0, "error": "DeadKernelError: Kernel died"}
    with Progress(3, events, bar=False, tick=0.01, order=["a", "b", "c"],
                  expected={"a": 60.0, "b": 60.0, "c": 60.0}, jobs=2) as progress:
        events.put(("a", "start", None, 100.0))
        events.put(("b", "start", None, 101.0))
        deadline = time.monotonic() + 10
        while len(progress.running) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        progress.interrupt(["a", "b"])
        events.put(("a", "end", dead, 130.0))
        events.put(("b", "end", {"status": "ok", "seconds": 29.0, "error": ""}, 130.0))
    assert [r.getMessage() for r in caplog.records] == [
        "[0/3] batch: 3 notebooks on 2 jobs, about 2 min expected", "[0/3] a: started", "[0/3] b: started",
        "[0/3] batch: interrupted (Ctrl-C or SIGTERM); stopping a, b",
        "[1/3] a: interrupted after 30.0 s", "[2/3] b: ok in 29.0 s"]


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


@pytest.mark.unit
def test_time_left_plays_the_rest_of_the_batch_forward_on_the_slots():
    expected = {"a": 100.0, "b": 60.0, "c": 50.0, "d": 30.0}
    # nothing started, two slots: a | b+c... b (60) then c on the free slot at 60 -> 110, d on a's at 100 -> 130
    assert progress.time_left({}, ["a", "b", "c", "d"], expected, jobs=2) == 130.0
    # one slot: the sum
    assert progress.time_left({}, ["a", "b", "c", "d"], expected, jobs=1) == 240.0
    # a has run 70 s (30 left), b 20 s (40 left): c starts at 30 -> 80, d at 40 -> 70
    assert progress.time_left({"a": 70.0, "b": 20.0}, ["c", "d"], expected, jobs=2) == 80.0
    # a running notebook past its expected time counts as finishing now
    assert progress.time_left({"a": 500.0}, ["d"], expected, jobs=2) == 30.0
    # the pace scales every expectation (the machine is twice as slow)
    assert progress.time_left({}, ["a", "b"], expected, jobs=2, pace=2.0) == 200.0
    # an unknown notebook costs the mean of the known ones (60)
    assert progress.time_left({}, ["x"], expected, jobs=2) == 60.0
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        progress.time_left({}, ["a"], expected, jobs=0)


@pytest.mark.unit
def test_the_start_order_is_the_one_that_ends_soonest():
    # longest first ends at 7 on two slots (3 | 3, then 2, 2 | 2); starting a 2 second lets
    # the first slot take both 3s: 6
    expected = dict(a=3, b=3, c=2, d=2, e=2)
    assert progress.time_left({}, progress.longest_first(list(expected), expected), expected, jobs=2) == 7
    order = progress.best_order(list(expected), expected, jobs=2)
    assert progress.time_left({}, order, expected, jobs=2) == 6
    assert order == ["a", "c", "d", "b", "e"]            # the first such order from longest first
    # where longest first is already best it is kept; one job, or too many to try: longest first
    assert progress.best_order(["x", "y", "z"], dict(x=1, y=5, z=2), jobs=2) == ["y", "z", "x"]
    assert progress.best_order(list(expected), expected, jobs=1) == ["a", "b", "c", "d", "e"]
    assert progress.best_order(list(expected), expected, jobs=2, limit=4) == ["a", "b", "c", "d", "e"]
    # an unknown notebook counts as the longest
    assert progress.best_order(["x", "new"], dict(x=5), jobs=2)[0] == "new"


@pytest.mark.unit
def test_the_batch_starts_the_longest_notebook_first_on_two_jobs():
    expected = {"00_data": 21, "01_backbones": 731, "02_gradient_alignment": 2753}
    names = ["00_data", "01_backbones", "02_gradient_alignment", "new"]
    # on two jobs: an unknown notebook first (it might be the longest), then by expected seconds
    assert batch.schedule(names, 2, expected) == ["new", "02_gradient_alignment", "01_backbones", "00_data"]
    # one job, or no expectations: the given order
    assert batch.schedule(names, 1, expected) == names
    assert batch.schedule(names, 2, None) == names
    # the reference figures cover every notebook of the batch at quick
    assert set(batch.EXPECTED_SECONDS["quick"]) == set(batch.NOTEBOOKS)


@pytest.mark.unit
def test_progress_prints_the_batch_time_left_as_notebooks_finish(caplog):
    caplog.set_level("INFO", logger="seqtransfer.batch")
    events = queue.Queue()
    expected = {"a": 100.0, "b": 100.0, "c": 100.0}
    for e in [("a", "start", None, 0.0), ("b", "start", None, 0.0),
              # a took 200 s against 100 expected: the pace doubles, c's 100 s become 200
              ("a", "end", {"status": "ok", "seconds": 200.0, "error": ""}, 200.0)]:
        events.put(e)
    with Progress(3, events, bar=False, tick=0.01, order=["a", "b", "c"], expected=expected, jobs=2):
        pass
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "[0/3] batch: 3 notebooks on 2 jobs, about 3 min expected"
    # at 200 s: b is past its doubled 200 s (finishing now), c starts on a's slot: 200 s left
    assert lines[-1] == "[1/3] batch: elapsed 3 min, about 3 min left"
    assert progress._clock(200) == "3 min" and progress._clock(40) == "40 s"
    assert progress._clock(3900) == "1 h 05 min"
