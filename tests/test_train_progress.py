"""The training progress bar: counts steps, says the epoch and the last validation NDCG@10, and
leaves one line of text (never a widget) when training ends."""
from __future__ import annotations

import io
import re
import textwrap

import nbformat
import papermill as pm
import pytest
import torch

from seqtransfer import data
from seqtransfer.models import make_backbone
from seqtransfer.train_progress import TrainProgress, planned_steps
from seqtransfer.train import TrainConfig, fit

WIDGET = "application/vnd.jupyter.widget-view+json"


def _screen(written: str) -> str:
    """What a terminal shows after ``written``: each carriage return rewinds its line."""
    return "\n".join(line.split("\r")[-1] for line in written.split("\n"))


@pytest.mark.unit
def test_planned_steps_hand_computed():
    assert planned_steps(10, epochs=3) == 30
    assert planned_steps(10, epochs=3, max_steps=4) == 4             # the smoke budget's cap
    assert planned_steps(10, epochs=3, start_epoch=1, done_steps=10) == 30   # resumed after 1 epoch
    assert planned_steps(iter(range(7)), epochs=2) == 14              # one epoch's batches, counted
    assert planned_steps(10, epochs=3, start_epoch=3, done_steps=30) == 30   # nothing left to do
    with pytest.raises(ValueError, match="must be >= 0"):
        planned_steps(-1, epochs=3)


@pytest.mark.unit
def test_text_bar_counts_steps_and_leaves_one_line():
    buf = io.StringIO()
    bar = TrainProgress(6, epochs=3, widget=False, file=buf)
    bar.step(0)
    bar.step(0)
    assert bar.n == 2 and bar.text() == "epoch 1/3"
    bar.evaluated(0, 0.12345)
    assert bar.text() == "epoch 1/3, valid NDCG@10 0.1235"
    assert "2/6" in buf.getvalue() and "valid NDCG@10 0.1235" in buf.getvalue()
    for epoch in (1, 1, 2, 2):
        bar.step(epoch)
    bar.evaluated(2, 0.2)
    bar.close("max_steps=6")
    bar.close()                                   # a second close adds nothing
    lines = [line for line in _screen(buf.getvalue()).split("\n") if line.strip()]
    assert len(lines) == 1, lines                 # the bar cleared itself, one line stays
    assert re.fullmatch(r"training: 6/6 steps in \d+\.\d s, epoch 3/3, valid NDCG@10 0\.2000 \(max_steps=6\)",
                        lines[0]), lines[0]


@pytest.mark.unit
def test_disabled_bar_writes_nothing():
    buf = io.StringIO()
    bar = TrainProgress(5, enabled=False, widget=False, file=buf)
    bar.step(0)
    bar.evaluated(0, 0.5)
    bar.close("done")
    assert buf.getvalue() == "" and bar.n == 1


@pytest.mark.unit
def test_fit_reports_steps_not_epochs(tmp_path, capsys):
    rows = [f"u{u},i{(u + t) % 7},{100 * t + u}" for u in range(6) for t in range(6)]
    (tmp_path / "inter.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    sd = data.build_sequences(data.leave_one_out(data.load(tmp_path / "inter.csv", min_user=1, min_item=1)),
                              max_len=5)
    torch.manual_seed(0)
    model = make_backbone("gru4rec", sd.n_items, dim=8)
    # 6 windows in batches of 2: 3 steps an epoch; 2 epochs = 6 planned steps, capped at 5
    result = fit(model, sd, TrainConfig(epochs=2, batch_size=2, max_steps=5, progress=True))
    assert result.steps == 5
    lines = [line for line in _screen(capsys.readouterr().err).split("\n") if line.strip()]
    assert len(lines) == 1, lines
    ndcg = result.history["valid_ndcg10"].dropna().iloc[-1]
    assert lines[0].startswith("training: 5/5 steps in ")
    assert lines[0].endswith(f", epoch 2/2, valid NDCG@10 {ndcg:.4f} (max_steps=5)")


@pytest.mark.notebook
def test_notebook_keeps_a_line_not_a_widget(tmp_path):
    """In a Jupyter kernel the bar is a widget while it runs; the saved notebook holds only the
    final line (a saved widget view shows "model not found" when the notebook is reopened)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent("""
        from seqtransfer.train_progress import TrainProgress
        bar = TrainProgress(3, epochs=1, desc="sasrec joint")
        assert bar._handle is not None      # the widget bar, shown through a display handle
        for _ in range(3):
            bar.step(0)
        bar.evaluated(0, 0.25)
        bar.close("epochs")
    """))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src, out = tmp_path / "bar.ipynb", tmp_path / "bar.out.ipynb"
    nbformat.write(nb, str(src))
    pm.execute_notebook(str(src), str(out), kernel_name="python3", progress_bar=False, execution_timeout=120)
    (output,) = nbformat.read(str(out), as_version=4).cells[0].outputs
    assert WIDGET not in output["data"]
    assert re.fullmatch(r"sasrec joint: 3/3 steps in \d+\.\d s, epoch 1/1, valid NDCG@10 0\.2500 \(epochs\)",
                        output["data"]["text/plain"])
