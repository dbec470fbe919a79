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
