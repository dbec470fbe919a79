"""seqtransfer.timing: per-notebook and per-section times read from an executed batch folder."""
import nbformat
import pandas as pd
import pytest

from seqtransfer import bench, timing

pytestmark = pytest.mark.unit


def _executed(path, cells):
    """A notebook whose code cells carry papermill durations: cells are ("md", text) or
    ("code", seconds or None)."""
    nb = nbformat.v4.new_notebook()
    for kind, value in cells:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(value))
        else:
            cell = nbformat.v4.new_code_cell("pass")
            if value is not None:
                cell.metadata["papermill"] = {"duration": value}
            nb.cells.append(cell)
    nbformat.write(nb, path)


def _batch(tmp_path):
    _executed(tmp_path / "01_a.ipynb", [("md", "# 01 · A\n\nintro"), ("code", 1.0), ("code", 2.0),
                                        ("md", "## 1. Train\n\ntext"), ("code", 30.0), ("md", "no heading here"),
                                        ("code", 10.0), ("md", "## 2. Figures"), ("code", 5.0), ("code", None)])
    _executed(tmp_path / "00_b.ipynb", [("code", 4.0), ("md", "### 1. Only section"), ("code", 1.0)])
    pd.DataFrame({"notebook": ["00_b", "01_a"], "status": ["ok", "ok"], "seconds": [6.0, 49.0],
                  "attempts": 1, "error": "", "html": ""}).to_csv(tmp_path / "status.csv", index=False)


def test_cells_count_toward_the_numbered_section_above_them(tmp_path):
    _batch(tmp_path)
    t = timing.stage_times(tmp_path / "01_a.ipynb")
    assert t["section"].tolist() == ["setup", "1. Train", "2. Figures"]
    assert t["seconds"].tolist() == [3.0, 40.0, 5.0]            # the unnumbered note stays in 1.
    assert t["cells"].tolist() == [2, 2, 2]                     # an unexecuted cell counts 0 s


def test_the_batch_table_puts_the_longest_notebook_first_and_names_its_longest_stage(tmp_path, capsys):
    _batch(tmp_path)
    status, stages = timing.batch_times(tmp_path)
    assert status["notebook"].tolist() == ["01_a", "00_b"]
    a = stages[stages["notebook"] == "01_a"]
    assert a["share"].tolist() == pytest.approx([3 / 48, 40 / 48, 5 / 48])
    top = timing.dominant_stage(stages).set_index("notebook")
    assert top.loc["01_a", "section"] == "1. Train" and top.loc["00_b", "section"] == "setup"
    assert bench.main(["--batch", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "01_a: 1. Train (40 s, 83%)" in printed and printed.index("01_a: ok") < printed.index("00_b: ok")


def test_bad_folders_and_files_are_named(tmp_path, capsys):
    assert bench.main(["--batch", str(tmp_path / "nowhere")]) == 2
    assert "status.csv not found" in capsys.readouterr().err
    _executed(tmp_path / "raw.ipynb", [("code", None)])
    with pytest.raises(ValueError, match="no papermill cell durations"):
        timing.stage_times(tmp_path / "raw.ipynb")
    with pytest.raises(FileNotFoundError, match="no executed notebook"):
        timing.stage_times(tmp_path / "missing.ipynb")


def _cached(folder, name, variant, seconds, stopped="early stop: no better valid NDCG@10 for 5 evaluations",
            seed=0, stages=None, trained=None):
    import torch
    from seqtransfer.results import MethodResult
    from seqtransfer.train import TrainResult
    h = pd.DataFrame({"epoch": [0], "valid_ndcg10": [0.1]})
    t = TrainResult(torch.nn.Linear(1, 1), h, 0, 0.1, stopped, "cpu", seconds, 10)
    diag = {} if stages is None else {"stages": pd.DataFrame({"stage": list(range(len(stages))), "seconds": stages})}
    if trained is not None:
        diag["stages"]["trained"] = trained
    torch.save(MethodResult("m", variant, seed, pd.DataFrame(), h, torch.nn.Linear(1, 1), t, diag),
               folder / f"{name}.pt")


def test_arm_times_add_every_run_rung_and_stage_once(tmp_path, capsys):
    """Hand-made cache: arm A has three rungs (2 s each), two continued runs (30, 20 s: their own
    seconds, the rung's not again) and a seed-1 run (25 s): 81 s, 6 of them in rungs; the
    period-by-period arm B counts its stages (40 + 50 s), not its last loop's 50 s; arm C's
    backbone stage is an input run's (trained False): only its own 7 s count."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(3):
        _cached(runs, f"a-rung{i}", "A", 2.0, stopped="rung=1")
    _cached(runs, "a0", "A", 30.0)
    _cached(runs, "a0b", "A", 20.0)
    _cached(runs, "a1", "A", 25.0, seed=1)
    _cached(runs, "b0", "B", 50.0, stages=[40.0, 50.0])
    _cached(runs, "c0", "C", 7.0, stages=[100.0, 7.0], trained=[False, True])
    arms = timing.arm_times([runs]).set_index("variant")
    assert list(arms.index) == ["B", "A", "C"]                          # the costliest first
    assert arms.loc["C", "seconds"] == 7.0
    assert arms.loc["A", "seconds"] == 81.0 and arms.loc["A", "rung_seconds"] == 6.0
    assert (arms.loc["A", "runs"], arms.loc["A", "rungs"]) == (3, 3)
    assert arms.loc["B", "seconds"] == 90.0 and arms.loc["B", "runs"] == 1
    assert arms["share"].sum() == pytest.approx(1.0) and arms.loc["B", "share"] == pytest.approx(90 / 178)
    (tmp_path / "out").mkdir()
    pd.DataFrame({"notebook": ["01_a"], "status": ["ok"], "seconds": [9.0]}).to_csv(tmp_path / "out" / "status.csv",
                                                                                    index=False)
    assert bench.main(["--batch", str(tmp_path / "out"), "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "178 s in all" in out and "A (3 runs, 3 rungs 6 s)" in out and "B (1 runs)" in out
    with pytest.raises(FileNotFoundError, match="no run cache"):
        timing.arm_times([tmp_path / "nowhere"])
