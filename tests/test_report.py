"""Tests of seqtransfer.report (records, batch runner, HTML, index) and seqtransfer.cli.

The batch tests run tiny throwaway notebooks written into tmp_path, never the real ones.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import textwrap
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from seqtransfer import batch, cli, index, report
from seqtransfer import record as record_module

EXTERNAL_SRC = re.compile(r"""<script\b[^>]*\bsrc\s*=\s*["'](?:https?:)?//""", re.IGNORECASE)


def tidy_metrics(**extra_columns) -> pd.DataFrame:
    """3 groups x 2 metrics x 2 cut-offs = 12 rows, values in (0, 1)."""
    rows = [{"group": g, "metric": m, "k": k, "value": round(0.1 + 0.01 * i, 4)}
            for i, (g, m, k) in enumerate((g, m, k) for g in ("all", "head", "tail")
                                          for m in ("hr", "ndcg") for k in (5, 10))]
    return pd.DataFrame(rows).assign(**extra_columns)


META = {"notebook": "01_toy", "method": "toy", "dataset": "tiny", "backbone": "sasrec", "seed": 0}


def write_notebook(path: Path, *sources: str) -> Path:
    """A notebook with a tagged parameters cell (budget, device, interactive) and ``sources``."""
    params = nbformat.v4.new_code_cell('budget = "quick"\ndevice = "auto"\ninteractive = True')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=[params] + [
        nbformat.v4.new_code_cell(textwrap.dedent(s).strip()) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(path))
    return path


RECORD_CELL = """
    import pandas as pd
    from seqtransfer.report import record
    metrics = pd.DataFrame({"group": ["all", "head", "tail"] * 2,
                            "metric": ["ndcg"] * 3 + ["hr"] * 3, "k": 10,
                            "value": [0.10, 0.20, 0.05, 0.30, 0.40, 0.20]})
    record(metrics, notebook="good", method="toy", dataset="tiny", backbone="sasrec",
           seed=0, extra={"budget": budget, "threads": __import__("torch").get_num_threads()},
           verdicts=["The toy verdict."])
"""


# ---------------------------------------------------------------------------------------------
# record / read_records
# ---------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_record_builds_rows():
    payload = report.record(tidy_metrics(n_users=[100, 20, 80] * 4), **META)
    rows = pd.DataFrame(payload["rows"])
    assert list(rows.columns) == list(report.RESULT_COLUMNS)
    assert len(rows) == 12
    assert (rows["notebook"] == "01_toy").all() and (rows["seed"] == 0).all()
    first = payload["rows"][0]
    assert first == {"notebook": "01_toy", "method": "toy", "dataset": "tiny",
                     "backbone": "sasrec", "seed": 0, "group": "all", "metric": "hr", "k": 5,
                     "value": 0.1, "n_users": 100, "baseline": None}
    assert payload["extra"] == {}


@pytest.mark.unit
def test_record_keeps_test_split_and_labels_variants_protocols_seeds():
    test = tidy_metrics(split="test", variant="joint", protocol="full")
    val = tidy_metrics(split="valid", variant="joint", protocol="full")
    sampled = tidy_metrics(split="test", variant="joint", protocol="sampled")
    tail_only = tidy_metrics(split="test", variant="tail-only", protocol="full", seed=3)
    plain = tidy_metrics(split="test", variant=None, protocol=None)
    payload = report.record(pd.concat([test, val, sampled, tail_only, plain]), **META)
    rows = pd.DataFrame(payload["rows"])
    assert len(rows) == 4 * 12  # the validation rows are dropped
    assert set(rows["method"]) == {"toy:joint", "toy:tail-only", "toy"}
    assert set(rows["metric"]) == {"hr", "ndcg", "hr_sampled", "ndcg_sampled"}
    assert set(rows.loc[rows["method"] == "toy:tail-only", "seed"]) == {3}
    assert set(rows.loc[rows["method"] != "toy:tail-only", "seed"]) == {0}


@pytest.mark.unit
def test_rows_with_their_own_method_keep_it_and_count_once_on_the_leaderboard():
    """A method notebook records its base run as baseline:..., like notebook 01 does."""
    base = tidy_metrics(split="test", variant="joint", method="baseline")
    ours = tidy_metrics(split="test", variant="GA", method=None)
    rows = pd.DataFrame(report.record(pd.concat([base, ours]), **META)["rows"])
    assert set(rows["method"]) == {"baseline:joint", "toy:GA"}
    again = pd.DataFrame(report.record(base, **{**META, "notebook": "00_other"})["rows"])
    board = report.leaderboard(pd.concat([rows, again]).reindex(columns=list(report.RESULT_COLUMNS)))
    assert sorted(board["method"]) == ["baseline:joint", "toy:GA"] and set(board["seeds"]) == {1}


def two_backbones() -> pd.DataFrame:
    """Joint and tail-only runs of two backbones, base rows under the method "baseline"."""
    frames = [tidy_metrics(variant=f"{b} {v}", backbone=b, method="baseline")
              for b in ("sasrec", "gru4rec") for v in ("joint", "tail-only")]
    frames.append(tidy_metrics(variant="sasrec GA", backbone="sasrec"))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.unit
def test_record_carries_each_rows_baseline():
    payload = report.record(two_backbones(), **{**META, "method": "ga"}, baseline="{backbone} joint")
    base = {(r["method"]): r["baseline"] for r in payload["rows"]}
    assert base == {"baseline:sasrec joint": None, "baseline:sasrec tail-only": "baseline:sasrec joint",
                    "baseline:gru4rec joint": None, "baseline:gru4rec tail-only": "baseline:gru4rec joint",
                    "ga:sasrec GA": "baseline:sasrec joint"}
    mapped = report.record(two_backbones(), **{**META, "method": "ga"},
                           baseline={"sasrec GA": "sasrec tail-only"})
    base = {(r["method"]): r["baseline"] for r in mapped["rows"]}
    assert base["ga:sasrec GA"] == "baseline:sasrec tail-only" and base["baseline:sasrec tail-only"] is None
    assert report.record(two_backbones(), **META)["rows"][0]["baseline"] is None
    with pytest.raises(ValueError, match="baseline 'sasrec scratch' of variant 'sasrec GA' is not a "
                                         "recorded variant; recorded: gru4rec joint, "):
        report.record(two_backbones(), **META, baseline={"sasrec GA": "sasrec scratch"})


@pytest.mark.unit
def test_verdicts_are_said_kept_and_recorded(capsys):
    say = report.Verdicts()
    say("sasrec GA beats sasrec joint for tail users.", end="\n\n")
    say("")
    say("  Its tail gain came", "without a head loss.")
    assert capsys.readouterr().out == ("sasrec GA beats sasrec joint for tail users.\n\n\n"
                                       "  Its tail gain came without a head loss.\n")
    payload = report.record(tidy_metrics(), **META, verdicts=say)
    assert payload["verdicts"] == ["sasrec GA beats sasrec joint for tail users.",
                                   "Its tail gain came without a head loss."]
    assert report.record(tidy_metrics(), **META)["verdicts"] == []
    with pytest.raises(TypeError, match="verdicts must be a list of sentences"):
        report.record(tidy_metrics(), **META, verdicts="one string")


@pytest.mark.unit
def test_record_display_bundle_is_text_only_and_metadata_has_rows(monkeypatch):
    shown = []
    monkeypatch.setattr(record_module, "get_ipython", lambda: object())
    monkeypatch.setattr(record_module, "display",
                        lambda data, raw, metadata: shown.append((data, raw, metadata)))
    payload = report.record(tidy_metrics(), **META)
    (data, raw, metadata), = shown
    assert raw is True
    assert list(data) == ["text/plain"]
    text = data["text/plain"]
    assert text == ("seqtransfer record: notebook=01_toy method=toy dataset=tiny "
                    "backbone=sasrec seed=0; 12 values; groups=all,head,tail; metrics=hr,ndcg; "
                    "k=5,10; all finite in [0, 1]: True")
    assert not re.search(r"0\.\d", text), "the summary must not carry metric values"
    assert metadata == {report.RECORD_KEY: payload}


@pytest.mark.unit
def test_record_summary_flags_values_out_of_range():
    payload = report.record(tidy_metrics().assign(value=[math.nan] + [0.5] * 11), **META)
    assert payload["rows"][0]["value"] is None  # NaN is not JSON
    assert report.record_summary(payload).endswith("all finite in [0, 1]: False")


@pytest.mark.unit
def test_record_missing_columns_name_them_and_the_fix():
    with pytest.raises(ValueError, match=r"lacks column\(s\) k, value.*group, metric, k, value"):
        report.record(tidy_metrics().drop(columns=["k", "value"]), **META)


@pytest.mark.unit
@pytest.mark.parametrize("metrics, message", [
    (tidy_metrics(split="valid"), "split == 'test'"),
    (tidy_metrics(k=2.5), "whole numbers"),
    (tidy_metrics(value="high"), "value must be numeric"),
    (pd.concat([tidy_metrics(), tidy_metrics()]), "two rows for method=toy"),
])
def test_record_rejects_bad_metrics(metrics, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        report.record(metrics, **META)


@pytest.mark.unit
def test_record_rejects_bad_meta_and_extra():
    with pytest.raises(TypeError, match="seed must be an int"):
        report.record(tidy_metrics(), **{**META, "seed": "0"})
    with pytest.raises(TypeError, match="dataset must be a non-empty string"):
        report.record(tidy_metrics(), **{**META, "dataset": ""})
    with pytest.raises(ValueError, match="JSON-able"):
        report.record(tidy_metrics(), **META, extra={"path": Path("x")})


@pytest.mark.unit
def test_read_records_round_trip(tmp_path):
    payload = report.record(tidy_metrics(), **META)
    output = nbformat.v4.new_output(
        "display_data", data={"text/plain": report.record_summary(payload)},
        metadata={report.RECORD_KEY: payload})
    cell = nbformat.v4.new_code_cell("record(...)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="training...\n"), output])
    path = tmp_path / "done.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"), cell]),
                   str(path))
    back = report.read_records(path)
    assert list(back.columns) == list(report.RESULT_COLUMNS)
    expected = pd.DataFrame(payload["rows"], columns=list(report.RESULT_COLUMNS))
    pd.testing.assert_frame_equal(back, expected)


@pytest.mark.unit
def test_read_records_of_notebook_without_records_is_empty(tmp_path):
    path = write_notebook(tmp_path / "none.ipynb", "1 + 1")
    back = report.read_records(path)
    assert back.empty and list(back.columns) == list(report.RESULT_COLUMNS)


# ---------------------------------------------------------------------------------------------
# leaderboard, index, HTML helpers
# ---------------------------------------------------------------------------------------------


def results_frame() -> pd.DataFrame:
    """Method a: two seeds; method b: one seed and better NDCG@10 all."""
    rows = []
    for method, seed, base in (("a", 0, 0.10), ("a", 1, 0.20), ("b", 0, 0.30)):
        for i, group in enumerate(("all", "head", "tail")):
            for metric in ("ndcg", "hr", "mrr"):
                rows.append({"notebook": "nb", "method": method, "dataset": "tiny",
                             "backbone": "sasrec", "seed": seed, "group": group,
                             "metric": metric, "k": 10, "value": base + 0.01 * i})
    return pd.DataFrame(rows, columns=list(report.RESULT_COLUMNS))


@pytest.mark.unit
def test_leaderboard_means_over_seeds_and_sorts():
    board = report.leaderboard(results_frame())
    assert list(board["method"]) == ["b", "a"]
    assert list(board["seeds"]) == [1, 2]
    a = board.set_index("method").loc["a"]
    assert a["ndcg@10 all"] == pytest.approx(0.15)
    assert a["hr@10 tail"] == pytest.approx(0.17)
    # two seeds 0.1 and 0.2: sd 0.0707, t(1) = 12.706 -> 12.706 * 0.0707 / sqrt(2)
    assert a["ndcg@10 all ci95"] == pytest.approx(12.706 * 0.05, rel=1e-4)
    assert math.isnan(board.set_index("method").loc["b", "ndcg@10 all ci95"])
    assert "mrr@10 all" not in board.columns


@pytest.mark.unit
def test_write_index_shows_failures_and_best(tmp_path):
    status = pd.DataFrame([
        {"notebook": "good", "status": "ok", "seconds": 1.0, "attempts": 1, "error": "",
         "html": "good.html"},
        {"notebook": "bad", "status": "failed", "seconds": 2.0, "attempts": 1,
         "error": "ZeroDivisionError: division by zero (In [4]: 1 / 0)", "html": "bad.html"},
    ], columns=list(report.STATUS_COLUMNS))
    page = report.write_index(tmp_path, status, results_frame(), info={"budget": "smoke"}
                              ).read_text()
    assert "href='good.html'" in page and "href='bad.html'" in page
    assert "<td class='failed'>failed" in page and "ZeroDivisionError: division by zero" in page
    assert "1 of 2 notebooks ok" in page and "budget <b>smoke</b>" in page
    assert "<td class='num best'>0.3000</td>" in page  # b's NDCG@10 all
    # the figure loads the folder's one plotly.js, written beside the page
    assert page.count('src="plotly.min.js"') == 1 and "plotly.js v" not in page
    assert (tmp_path / "plotly.min.js").stat().st_size > 10**6 and not EXTERNAL_SRC.search(page)


@pytest.mark.unit
def test_index_marks_models_stopped_by_a_cap(tmp_path):
    from seqtransfer.batch import collect_capped
    nb = write_notebook(tmp_path / "n.ipynb", "x = 1")
    status = pd.DataFrame([{"notebook": "n", "status": "ok", "seconds": 1.0, "attempts": 1, "error": "",
                            "html": "n.html"}], columns=list(report.STATUS_COLUMNS))
    results = results_frame()
    label = results["method"].iloc[0]
    variant = label.split(":", 1)[-1]
    page = report.write_index(tmp_path, status, results, capped={variant: "max_minutes=10.0"}).read_text()
    assert f"{label} <span class='capped'" in page and "(stopped by a cap: max_minutes=10.0)" in page
    assert page.count("stopped by a cap") == 1
    # collect_capped reads run_facts out of the executed notebooks' records
    nbf = nbformat.read(str(nb), as_version=4)
    payload = {"notebook": "n", "extra": {"runs": {"a": {"lr": 0.003, "stopped": {"0": "early stop"}},
                                                    "b": {"lr": 0.003, "stopped": {"0": "epochs=200"}}}},
               "verdicts": [], "rows": []}
    nbf.cells[-1].outputs = [nbformat.v4.new_output("display_data", data={"text/plain": "r"},
                                                    metadata={report.RECORD_KEY: payload})]
    nbformat.write(nbf, str(nb))
    assert collect_capped(tmp_path, ["n"]) == {"b": "epochs=200"}


@pytest.mark.unit
def test_write_index_without_results(tmp_path):
    status = pd.DataFrame([{"notebook": "bad", "status": "timeout", "seconds": 9.0,
                            "attempts": 2, "error": "too slow", "html": ""}])
    page = report.write_index(tmp_path, status, pd.DataFrame(columns=report.RESULT_COLUMNS)
                              ).read_text()
    assert "No results were recorded" in page and "timeout (retried)" in page
    assert "plotly" not in page


@pytest.mark.unit
def test_write_index_from_status_csv(tmp_path):
    """status.csv read back has NaN for empty error/html; the index shows them as empty."""
    pd.DataFrame([{"notebook": "good", "status": "ok", "seconds": 1.0, "attempts": 1,
                   "error": "", "html": ""}]).to_csv(tmp_path / "status.csv", index=False)
    status = pd.read_csv(tmp_path / "status.csv")
    page = report.write_index(tmp_path, status, results_frame()).read_text()
    assert ">nan<" not in page and "HTML</a>" not in page


@pytest.mark.unit
def test_strip_external_scripts():
    page = ('<script src="https://cdn.example/require.js"></script><script>var x = 1;</script>'
            "<script type='text/javascript' src='//cdn.example/m.js'> </script>"
            '<script src="local.js"></script>')
    stripped = report.strip_external_scripts(page)
    assert not EXTERNAL_SRC.search(stripped)
    assert "<script>var x = 1;</script>" in stripped and 'src="local.js"' in stripped
    assert "external script https://cdn.example/require.js removed" in stripped


@pytest.mark.unit
def test_strip_volatile_metadata(tmp_path):
    path = write_notebook(tmp_path / "ref.ipynb", "x = 1")
    nb = nbformat.read(str(path), as_version=4)
    nb.metadata["papermill"] = {"parameters": {"budget": "smoke"}, "start_time": "t",
                                "input_path": "/x"}
    injected = nbformat.v4.new_code_cell('budget = "smoke"')
    injected.metadata = {"tags": ["injected-parameters"], "papermill": {"duration": 1.0}}
    nb.cells.insert(1, injected)
    nb.cells[2].metadata["execution"] = {"iopub.status.busy": "t"}
    nbformat.write(nb, str(path))
    report.strip_volatile_metadata(path)
    nb = nbformat.read(str(path), as_version=4)
    assert nb.metadata["papermill"] == {"parameters": {"budget": "smoke"}}
    assert nb.cells[1].id == "injected-parameters"
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)


@pytest.mark.unit
def test_unknown_names_and_bad_arguments_are_batch_errors(tmp_path):
    notebooks = {"good": "good.ipynb"}
    write_notebook(tmp_path / "good.ipynb", "1")
    with pytest.raises(report.BatchError, match="unknown notebook.*nope.*known notebooks are good"):
        report.run_batch(["nope"], notebooks=notebooks, notebooks_dir=tmp_path, out=tmp_path)
    with pytest.raises(report.BatchError, match="unknown budget 'huge'"):
        report.run_batch(budget="huge", notebooks=notebooks, notebooks_dir=tmp_path)
    with pytest.raises(report.BatchError, match="may not set budget"):
        report.run_batch(params={"budget": "full"}, notebooks=notebooks, notebooks_dir=tmp_path)
    with pytest.raises(report.BatchError, match="not found"):
        report.run_batch(notebooks={"gone": "gone.ipynb"}, notebooks_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("text, value", [
    ("3", 3), ("0.1", 0.1), ("True", True), ("[1, 2]", [1, 2]), ("'x'", "x"),
    ("gru4rec", "gru4rec"), ("ml-1m", "ml-1m")])
def test_cli_parses_parameter_values(text, value):
    assert cli.parse_value(text) == value


@pytest.mark.unit
def test_cli_run_passes_arguments_and_fails_on_failed_notebook(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run_batch(**kwargs):
        calls.append(kwargs)
        return pd.DataFrame([{"notebook": "a", "status": "ok", "seconds": 1.0, "error": ""},
                             {"notebook": "b", "status": "failed", "seconds": 1.0,
                              "error": "boom"}])

    monkeypatch.setattr(batch, "run_batch", fake_run_batch)
    code = cli.main(["run", "--budget", "smoke", "--only", "a", "b", "--out", str(tmp_path),
                     "-p", "seed", "3", "-p", "backbone", "gru4rec", "--jobs", "2"])
    assert code == 1
    assert calls[0]["params"] == {"seed": 3, "backbone": "gru4rec"}
    assert calls[0]["names"] == ["a", "b"] and calls[0]["jobs"] == 2
    out = capsys.readouterr().out
    assert "failed" in out and f"index: {tmp_path.resolve() / 'index.html'}" in out
    # the executor reaches every notebook as two parameters
    cli.main(["run", "--executor", "ray", "--ray-address", "ray://head:10001", "--out", str(tmp_path)])
    assert calls[1]["params"] == {"executor": "ray", "ray_address": "ray://head:10001"}
    cli.main(["run", "--executor", "ray", "--out", str(tmp_path)])
    assert calls[2]["params"] == {"executor": "ray", "ray_address": ""}


@pytest.mark.unit
@pytest.mark.parametrize("argv, message", [
    (["run", "--budget", "huge"], "unknown budget 'huge'; choose one of smoke, quick, full"),
    (["run", "--only", "nope"], "unknown notebook(s) nope; known notebooks are 00_data"),
    (["fetch", "nope"], "unknown dataset 'nope'"),
    (["run", "--executor", "spark"], "unknown executor 'spark'; choose one of local, ray"),
    (["run", "--ray-address", "auto"], "--ray-address needs --executor ray"),
])
def test_cli_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.unit
def test_cli_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--jobs", "many"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# The batch runner end to end (real kernels, tiny notebooks)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def toy_notebooks(tmp_path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "nbs"
    folder.mkdir()
    write_notebook(folder / "good.ipynb", RECORD_CELL)
    write_notebook(folder / "bad.ipynb", "x = 1", "1 / 0", "print('never')")
    return folder, {"good": "good.ipynb", "bad": "bad.ipynb"}


def test_batch_records_fails_and_goes_on(toy_notebooks, tmp_path, monkeypatch, capfd, caplog):
    folder, notebooks = toy_notebooks
    out = tmp_path / "out"
    monkeypatch.delenv("PLOTLY_RENDERER", raising=False)
    caplog.set_level("INFO", logger="seqtransfer")
    status = report.run_batch(budget="smoke", out=out, jobs=2, device="cpu",
                              notebooks_dir=folder, notebooks=notebooks, timeout=60)
    # the kernels' stderr (inherited) carries no warning about unencrypted TCP
    assert "encryption" not in capfd.readouterr().err
    # progress from the pool workers, one line per section (these notebooks have none)
    lines = [r.getMessage() for r in caplog.records if r.name == "seqtransfer.batch"]
    assert any(re.fullmatch(r"\[\d/2\] good: started", x) for x in lines), lines
    assert any(re.fullmatch(r"\[\d/2\] bad: failed in [\d.]+ s \(ZeroDivisionError.*", x) for x in lines), lines
    assert "PLOTLY_RENDERER" not in os.environ  # set for the kernels only, then restored
    by_name = status.set_index("notebook")
    assert list(status["notebook"]) == ["good", "bad"]
    assert by_name.loc["good", "status"] == "ok"
    assert by_name.loc["bad", "status"] == "failed"
    assert by_name.loc["bad", "error"] == "ZeroDivisionError: division by zero (In [4]: 1 / 0)"
    for name in notebooks:  # the failed notebook is still reported
        assert (out / f"{name}.html").exists() and by_name.loc[name, "html"] == f"{name}.html"
        assert not EXTERNAL_SRC.search((out / f"{name}.html").read_text())

    # the record output: text/plain only, values in metadata, parameters injected
    nb = nbformat.read(str(out / "good.ipynb"), as_version=4)
    # one output, though record(...) is the cell's last expression: the payload is not echoed
    (output,) = nb.cells[-1].outputs
    assert list(output["data"]) == ["text/plain"]
    # two jobs on this machine: each kernel gets its share of the cores, no oversubscription
    share = max(1, (os.cpu_count() or 1) // 2)
    assert output["metadata"][report.RECORD_KEY]["extra"] == {"budget": "smoke", "threads": share}

    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == list(report.RESULT_COLUMNS)
    assert len(results) == 6 and set(results["notebook"]) == {"good"}
    assert pd.read_csv(out / "status.csv")["status"].tolist() == ["ok", "failed"]
    index = (out / "index.html").read_text()
    assert "ZeroDivisionError: division by zero" in index and "href='good.html'" in index
    assert "toy" in index and not EXTERNAL_SRC.search(index)
    assert "<li>The toy verdict.</li>" in index


@pytest.mark.skipif(os.name != "posix", reason="socket-file kernels are for systems with Unix sockets")
def test_batch_kernels_listen_on_socket_files_of_their_own(tmp_path):
    """Two kernels started at once in one folder talk over Unix socket files, each in a folder of
    its own that goes when the run ends: no TCP port to race for (two TCP kernels starting
    together can pick the same port, and one dies with "Address already in use")."""
    folder = tmp_path / "nbs"
    folder.mkdir()
    cell = """
        import json, os
        from ipykernel import get_connection_info
        info = get_connection_info(unpack=True)
        ports = [info[p] for p in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")]
        print(json.dumps({"transport": info["transport"], "ip": info["ip"],
                          "files": all(os.path.exists(f"{info['ip']}-{p}") for p in ports)}))
    """
    for name in ("a", "b"):
        write_notebook(folder / f"{name}.ipynb", cell)
    out = tmp_path / "out"
    status = report.run_batch(budget="smoke", out=out, jobs=2, notebooks_dir=folder,
                              notebooks={"a": "a.ipynb", "b": "b.ipynb"}, timeout=60)
    assert status["status"].tolist() == ["ok", "ok"], status["error"].tolist()
    seen = []
    for name in ("a", "b"):
        nb = nbformat.read(str(out / f"{name}.ipynb"), as_version=4)
        seen.append(json.loads(nb.cells[-1].outputs[0]["text"]))
    for info in seen:
        assert info["transport"] == "ipc" and os.path.isabs(info["ip"]) and info["files"], info
        assert not os.path.exists(os.path.dirname(info["ip"])), info   # removed with the run
    assert seen[0]["ip"] != seen[1]["ip"]
    with pytest.raises(report.BatchError, match="kernel transport must be 'ipc' or 'tcp', got 'udp'"):
        with batch._kernel_manager("udp"):
            pass


BATCH_SCRIPT = """
import logging, signal, sys
from seqtransfer import batch

if __name__ == "__main__":   # notebooks run in spawned processes, which import this file
    signal.signal(signal.SIGINT, signal.default_int_handler)   # as in a terminal's foreground
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # the progress lines
    try:
        batch.run_batch(budget="smoke", out=sys.argv[1], jobs=2, notebooks_dir=sys.argv[2],
                        notebooks={"a": "a.ipynb", "b": "b.ipynb", "c": "c.ipynb"}, timeout=600)
    except batch.BatchInterrupted as stop:
        stop.status.to_csv(sys.stdout, index=False)
        sys.exit(3)
"""


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which an orphan becomes until init reaps it, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if not Path("/proc").is_dir():
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:   # gone in between
        return False


def _busy_batch(tmp_path):
    """``BATCH_SCRIPT`` started on notebooks a, b, c that loop forever, two jobs, in a session of
    its own with a short TMPDIR of its own; returned once a's and b's kernels run, with their
    process ids. The caller stops it (``_stopped``)."""
    import subprocess
    import sys
    import tempfile
    import time

    folder, pids = tmp_path / "nbs", tmp_path / "pids"
    folder.mkdir()
    pids.mkdir()
    for name in ("a", "b", "c"):
        write_notebook(folder / f"{name}.ipynb", "x = 1", f"""
            import os
            open({str(pids / name)!r}, "w").write(str(os.getpid()))
            while True:
                sum(range(10**6))""")
    script = tmp_path / "batch.py"
    script.write_text(BATCH_SCRIPT)
    tmp = tempfile.mkdtemp(prefix="t", dir="/tmp")   # short: socket paths live under it
    out = tmp_path / "out"
    out.mkdir()
    # an earlier batch's c: its records must not pass for this batch's, which never starts c
    write_notebook(out / "c.ipynb", RECORD_CELL)
    proc = subprocess.Popen([sys.executable, str(script), str(out), str(folder)], start_new_session=True,
                            env={**os.environ, "TMPDIR": tmp}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        while not all((pids / n).exists() and (pids / n).read_text() for n in ("a", "b")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.5)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc, [int((pids / n).read_text()) for n in ("a", "b")], pids, out, tmp


@pytest.mark.skipif(os.name != "posix", reason="signals and process groups")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_batch_stops_its_kernels_and_keeps_what_ran(tmp_path, how):
    """Ctrl-C in a terminal (SIGINT to the whole process group) or ``kill`` (SIGTERM to the batch
    process) while two notebooks run: both kernels stop, the third notebook never starts, the
    two write out the cells they ran and get reports, status.csv and the index say so, the log
    calls them interrupted, and no socket folder is left. Before, Ctrl-C left both kernels
    training."""
    import time

    proc, kernels, pids, out, tmp = _busy_batch(tmp_path)
    try:
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, stderr
    time.sleep(1.5)   # a kernel's last moments
    assert not any(_alive(pid) for pid in kernels), kernels
    status = pd.read_csv(out / "status.csv")
    assert status["status"].tolist() == ["interrupted", "interrupted", "not started"], status
    assert status["html"].fillna("").tolist() == ["a.html", "b.html", ""]
    assert not (pids / "c").exists() and not (out / "c.ipynb").exists()
    assert pd.read_csv(out / "results.csv").empty
    for name in ("a", "b"):
        nb = nbformat.read(str(out / f"{name}.ipynb"), as_version=4)
        # written whole by its process after its kernel stopped, not cut off by a kill
        assert nb.metadata["papermill"]["end_time"], name
        assert nb.cells[1].metadata["papermill"]["status"] == "completed"
    index_html = (out / "index.html").read_text()
    assert "interrupted" in index_html and "not started" in index_html and "href='c.ipynb'" not in index_html
    assert "batch: interrupted (Ctrl-C or SIGTERM); stopping a, b" in stderr, stderr
    assert "a: interrupted after" in stderr and "b: interrupted after" in stderr, stderr
    assert "DeadKernelError" not in stderr, stderr     # what the stopped kernel looks like from inside
    assert os.listdir(tmp) == []   # the kernels' socket folders went with them
    os.rmdir(tmp)


@pytest.mark.skipif(os.name != "posix", reason="signals")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_batch_stopped_during_its_figure_check_still_writes_its_index(tmp_path, monkeypatch, how):
    """Ctrl-C or SIGTERM while the browser checks the figures, after every notebook ended: the
    batch raises BatchInterrupted after writing status, results and the index, which says the
    check was stopped and shows no earlier batch's figures. Before, SIGTERM there ended the
    process at once and Ctrl-C left no index."""
    import time

    write_notebook(tmp_path / "good.ipynb", RECORD_CELL)
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)   # an earlier batch's check, which this one must not show
    (out / "figures" / "checks.json").write_text(
        '[{"page": "good.html", "errors": [], "figures": [], "problems": ["good.html: an earlier batch\'s"]}]')

    def capture_batch(into, names):
        if how == "sigterm":
            assert callable(signal.getsignal(signal.SIGTERM)), "SIGTERM would end the batch here"
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "capture_batch", capture_batch)
    with pytest.raises(batch.BatchInterrupted) as stop:
        report.run_batch(budget="smoke", out=out, notebooks_dir=tmp_path,
                         notebooks={"good": "good.ipynb"}, timeout=120)
    assert stop.value.status["status"].tolist() == ["ok"]
    assert len(pd.read_csv(out / "results.csv")) == 6
    index_html = (out / "index.html").read_text()
    assert "during the figure check" in index_html and "The toy verdict." in index_html
    assert "an earlier batch" not in index_html and not (out / "figures" / "checks.json").exists()


@pytest.mark.skipif(os.name != "posix", reason="signals and process groups")
def test_a_killed_batch_leaves_no_kernel_and_no_socket_folder(tmp_path):
    """SIGKILL of the batch process, which can clean nothing up: each notebook's process sees
    its parent gone, removes the kernels' socket folder and exits, and each kernel follows
    its own parent. Before, the socket folder stayed in the temp dir."""
    import time

    proc, kernels, _, _, tmp = _busy_batch(tmp_path)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while (any(_alive(pid) for pid in kernels) or os.listdir(tmp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        assert not any(_alive(pid) for pid in kernels), kernels
        assert os.listdir(tmp) == []
    finally:
        for pid in kernels:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    os.rmdir(tmp)


def test_a_notebook_whose_process_dies_fails_and_the_batch_goes_on(tmp_path):
    """A notebook process killed from outside (here by its own kernel) leaves no status row of
    its own: it is recorded as failed with the exit code, and the next notebook still runs."""
    write_notebook(tmp_path / "crash.ipynb", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    write_notebook(tmp_path / "after.ipynb", "x = 1")
    status = report.run_batch(budget="smoke", out=tmp_path / "out", notebooks_dir=tmp_path,
                              notebooks={"crash": "crash.ipynb", "after": "after.ipynb"}, timeout=60)
    assert status["status"].tolist() == ["failed", "ok"]
    assert status["error"].iloc[0].startswith("the process running it died (exit code -9)")


@pytest.mark.unit
def test_kernel_threads_share_the_cores_among_jobs():
    from seqtransfer.batch import kernel_threads
    assert kernel_threads(1, cores=8) == {}                    # a lone kernel uses every core
    assert kernel_threads(2, cores=2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                          "SEQTRANSFER_RAY_CPUS": "1"}
    assert kernel_threads(2, cores=8)["OMP_NUM_THREADS"] == "4"
    assert kernel_threads(3, cores=2)["OMP_NUM_THREADS"] == "1"  # never zero


@pytest.mark.unit
def test_parameters_go_where_declared_and_unknown_ones_are_errors(toy_notebooks, tmp_path):
    folder, notebooks = toy_notebooks
    write_notebook(folder / "good.ipynb", RECORD_CELL)
    nb = nbformat.read(str(folder / "good.ipynb"), as_version=4)
    nb.cells[0].source += "\nuser_col = ''  # a comment\nx: int = 3"
    nbformat.write(nb, str(folder / "good.ipynb"))
    assert batch.notebook_parameters(folder / "good.ipynb") == {"budget", "device", "interactive",
                                                                "user_col", "x"}
    assert batch.notebook_parameters(folder / "bad.ipynb") == {"budget", "device", "interactive"}
    given = {"budget": "smoke", "device": "cpu", "interactive": False, "user_col": "uid"}
    assert batch._own_parameters(given, {"user_col"}) == given
    assert batch._own_parameters(given, set()) == {"budget": "smoke", "device": "cpu", "interactive": False}
    with pytest.raises(report.BatchError, match="no selected notebook has the parameter.s. usr_col; "
                                                "their parameters are budget, device, interactive, user_col, x"):
        report.run_batch(budget="smoke", out=tmp_path / "out", notebooks_dir=folder,
                         notebooks=notebooks, params={"usr_col": "uid", "user_col": "uid"})
    assert not (tmp_path / "out").exists()    # nothing ran


def test_batch_timeout_is_retried_once(tmp_path):
    write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(60)")
    out = tmp_path / "out"
    status = report.run_batch(out=out, notebooks_dir=tmp_path, notebooks={"slow": "slow.ipynb"},
                              timeout=1, budget="smoke")
    row = status.iloc[0]
    assert (row["status"], row["attempts"]) == ("timeout", 2)
    assert "1 s per-cell timeout" in row["error"]
    assert row["seconds"] < 30
    index = (out / "index.html").read_text()
    assert "timeout (retried)" in index and "No results were recorded" in index


def test_make_nbval_refs(tmp_path):
    write_notebook(tmp_path / "plot.ipynb", """
        import plotly.graph_objects as go
        go.Figure(go.Bar(x=["head", "tail"], y=[0.3, 0.1])).show()
    """, RECORD_CELL)
    write_notebook(tmp_path / "bad.ipynb", "1 / 0")
    notebooks = {"plot": "plot.ipynb", "bad": "bad.ipynb"}
    dest = tmp_path / "refs"
    (path,) = report.make_nbval_refs(["plot"], dest, notebooks=notebooks, notebooks_dir=tmp_path)
    assert path == dest / "plot.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    # a reference run passes only the parameters the notebook declares (this one has no cache_runs)
    declared = {k: v for k, v in report.REFERENCE_PARAMETERS.items() if k in ("budget", "device", "interactive")}
    assert nb.metadata["papermill"] == {"parameters": declared} and "cache_runs" in report.REFERENCE_PARAMETERS
    assert nb.cells[1].id == "injected-parameters" and 'budget = "smoke"' in nb.cells[1].source
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)
    # outputs kept; plotly as JSON only, without 5 MB of plotly.js
    assert list(nb.cells[2].outputs[0]["data"]) == ["application/vnd.plotly.v1+json"]
    assert report.read_records(path)["value"].tolist() == [0.10, 0.20, 0.05, 0.30, 0.40, 0.20]
    with pytest.raises(RuntimeError, match="bad failed: ZeroDivisionError"):
        report.make_nbval_refs(["bad"], dest, notebooks=notebooks, notebooks_dir=tmp_path)


# ---------------------------------------------------------------------------------------------
# The reports in a real browser
# ---------------------------------------------------------------------------------------------


@pytest.mark.browser
def test_reports_render_plotly_in_chromium(tmp_path, chromium_dom):
    write_notebook(tmp_path / "plot.ipynb", """
        import plotly.graph_objects as go
        go.Figure(go.Bar(x=["head", "tail"], y=[0.3, 0.1])).show()
    """, RECORD_CELL)
    out = tmp_path / "out"
    status = report.run_batch(out=out, notebooks_dir=tmp_path, notebooks={"plot": "plot.ipynb"},
                              budget="smoke", device="cpu", timeout=60)
    assert status["status"].tolist() == ["ok"], status["error"].tolist()
    # one plotly.js in the folder, referenced by the report and the index, inlined nowhere
    assert (out / "plotly.min.js").stat().st_size > 10**6
    for page in (out / "plot.html", out / "index.html", out / "plot.ipynb"):
        text = page.read_text()
        assert "plotly.js v" not in text and len(text) < 10**6, page
    for page in (out / "plot.html", out / "index.html"):
        assert page.read_text().count('src="plotly.min.js"') == 1
        assert 'class="main-svg"' in chromium_dom(page), f"plotly did not draw in {page}"
    # without the shared file no figure draws: the pages really use it, and only it
    (out / "plotly.min.js").rename(out / "elsewhere.js")
    assert 'class="main-svg"' not in chromium_dom(out / "plot.html")


@pytest.mark.unit
def test_record_keeps_comparisons_for_the_index():
    boot = pd.DataFrame([{"variant": "v", "baseline": "b", "group": "tail", "metric": "ndcg", "k": 10,
                          "a": 0.2, "b": 0.1, "diff": 0.1, "lo": 0.05, "hi": float("nan"),
                          "verdict": "positive", "n_users": 3}])
    payload = report.record(tidy_metrics(), **META, comparisons=boot)
    assert payload["comparisons"] == [{"variant": "v", "baseline": "b", "group": "tail", "metric": "ndcg",
                                       "k": 10, "a": 0.2, "b": 0.1, "diff": 0.1, "lo": 0.05, "hi": None,
                                       "verdict": "positive"}]
    assert report.record(tidy_metrics(), **META)["comparisons"] == []
    with pytest.raises(ValueError, match=r"comparisons lacks columns \['lo', 'hi'\]"):
        report.record(tidy_metrics(), **META, comparisons=boot.drop(columns=["lo", "hi"]))
