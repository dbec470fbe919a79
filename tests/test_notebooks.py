"""The notebooks: clean sources, one template, nbval reference copies in step with them, and
papermill smoke runs whose recorded metrics are checked.

Tiers: ``unit`` tests read the notebook files only; ``notebook`` tests execute them at the
smoke budget (numbers are noise there, so assertions are on structure and on relations that
hold for any model: values in [0, 1], NDCG@K <= HR@K, metrics growing with K). The nbval
regression itself runs on ``tests/notebooks/*.ipynb`` through pytest's ``--nbval-lax``
(see ``pyproject.toml``); ``seqtransfer nbval-refs`` re-makes those copies.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pandas as pd
import papermill as pm
import pytest

from seqtransfer import report
from seqtransfer.methods.common import ONE_SEED

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "notebooks"
REFS = ROOT / "tests" / "notebooks"
SHARED_PARAMETERS = {"budget": "quick", "seed": 0, "device": "auto", "interactive": True}


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def _code(nb, skip_injected: bool = False) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"
            and not (skip_injected and "injected-parameters" in c.metadata.get("tags", []))]


def _parameters_cell(nb):
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    return tagged[0]


@pytest.mark.unit
def test_every_registered_notebook_exists_and_nothing_else():
    on_disk = sorted(p.name for p in SOURCES.glob("*.ipynb"))
    assert on_disk == sorted(report.NOTEBOOKS.values())


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(report.NOTEBOOKS))
def test_source_notebook_is_clean_and_follows_the_template(name):
    nb = _read(SOURCES / report.NOTEBOOKS[name])
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{name}: commit notebooks without outputs (Kernel > Restart and Clear Outputs)"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    params = _parameters_cell(nb)
    values = {}
    for line in params.source.splitlines():
        assert "#" in line, f"{name}: parameter line without a comment: {line!r}"
        (stmt,) = ast.parse(line).body
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
        target = stmt.targets[0].id
        assert target == target.lower(), f"{name}: parameter names are snake_case: {target}"
        values[target] = ast.literal_eval(stmt.value)  # literals only
    for key, default in SHARED_PARAMETERS.items():
        assert values.get(key) == default, f"{name}: shared parameter {key} should default to {default!r}"
    last = nb.cells[-1]
    assert last.cell_type == "code" and "record(" in last.source
    assert "NBVAL_CHECK_OUTPUT" in last.source


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(report.NOTEBOOKS))
def test_nbval_reference_matches_source(name):
    ref = REFS / f"{name}.ipynb"
    assert ref.exists(), f"missing {ref}; run `seqtransfer nbval-refs`"
    src, copy = _read(SOURCES / report.NOTEBOOKS[name]), _read(ref)
    assert _code(copy, skip_injected=True) == _code(src), \
        f"{ref} is out of date with notebooks/{report.NOTEBOOKS[name]}; run `seqtransfer nbval-refs {name}`"
    injected = [c for c in copy.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'budget = "smoke"' in injected[0].source
    # the record output is stored, so nbval has something to compare
    (out,) = copy.cells[-1].outputs
    assert report.RECORD_KEY in out["metadata"]


def _smoke(name: str, tmp_path: Path, **extra) -> pd.DataFrame:
    out = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(SOURCES / report.NOTEBOOKS[name]), str(out), kernel_name="python3",
                        parameters={**report.REFERENCE_PARAMETERS, **extra}, progress_bar=False,
                        execution_timeout=600)
    return report.read_records(out)


def _payload(tmp_path: Path, name: str) -> dict:
    (payload,) = report.read_payloads(tmp_path / f"{name}.ipynb")
    return payload


def _check_baselines_and_verdicts(rows: pd.DataFrame, payload: dict) -> None:
    """Every non-joint row is compared with the joint model of its backbone, and the verdict
    sentences travel with the record, each with its seed information: "one seed: seed noise not
    measured" for one seed, the per-seed differences for several."""
    joint = rows["method"].str.endswith(" joint")
    assert rows.loc[joint, "baseline"].isna().all()
    expected = "baseline:" + rows.loc[~joint, "backbone"] + " joint"
    assert (rows.loc[~joint, "baseline"] == expected).all()
    assert len(payload["verdicts"]) >= 4
    # verdict_sentence's three forms: outside the noise either way, or inside it
    assert any(w in v for v in payload["verdicts"] for w in ("does NOT beat", " beats ", "no detectable difference"))
    n_seeds = rows["seed"].nunique()
    compared = [v for v in payload["verdicts"] if re.search(r" (beats|vs) .+ for \w+ users: ", v)]
    assert compared
    for v in compared:
        if n_seeds == 1:
            assert v.rstrip().endswith(f"({ONE_SEED}).") or f"({ONE_SEED})" in v, v
        else:
            seeds = ", ".join(map(str, sorted(rows["seed"].unique())))
            assert ONE_SEED not in v and (f"over seeds {seeds}" in v or "the same result for every user" in v), v


def _check_ranking_rows(rows: pd.DataFrame) -> None:
    assert rows["value"].between(0, 1).all()
    wide = rows.pivot_table(index=["method", "backbone", "seed", "group", "k"], columns="metric",
                            values="value")
    assert (wide["ndcg"] <= wide["hr"] + 1e-9).all()      # NDCG@K <= HR@K for any ranking
    assert (wide["mrr"] <= wide["ndcg"] + 1e-9).all()     # and MRR@K <= NDCG@K
    hr = rows[rows["metric"] == "hr"].pivot_table(index=["method", "backbone", "seed", "group"],
                                                  columns="k", values="value")
    assert (hr[5] <= hr[10]).all() and (hr[10] <= hr[20]).all()


def _base_labels(backbones=("sasrec",)) -> set[str]:
    """How every notebook labels the base and tail-only runs: the same rows, counted once."""
    return {f"baseline:{b} {v}" for b in backbones for v in ("joint", "tail-only")}


def _backbones(dataset: str) -> tuple[str, ...]:
    """The notebooks default to SASRec alone; on ml-1m the smoke tests also pass GRU4Rec, so the
    two-backbone paths (panels with different layers, per-backbone bars) run too."""
    return ("sasrec", "gru4rec") if dataset == "ml-1m" else ("sasrec",)


def _method_smoke(name: str, tmp_path: Path, dataset: str, **params) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """On ml-100k two seeds (so the several-seed verdicts run), on ml-1m the smoke budget's one."""
    backbones = _backbones(dataset)
    seeds = {"n_seeds": 2} if dataset == "ml-100k" else {}
    rows = _smoke(name, tmp_path, dataset=dataset, backbones=list(backbones), **seeds, **params)
    assert rows["seed"].nunique() == seeds.get("n_seeds", 1)
    return rows, backbones


def _check_method_rows(rows: pd.DataFrame, backbones=("sasrec",)) -> None:
    """What every method notebook records at the smoke budget: its backbones, every group and
    cut-off, coherent rankings, and group sizes of the 300-user sample."""
    assert set(rows["backbone"]) == set(backbones)
    assert set(rows["group"]) == {"all", "head", "tail", "cold"}
    assert set(rows["k"]) == {5, 10, 20}
    _check_ranking_rows(rows)
    users = rows.drop_duplicates("group").set_index("group")["n_users"]
    assert users["head"] + users["tail"] == users["all"] == 300   # the smoke budget's sample


# Every notebook runs at the smoke budget on each built-in dataset (ml-100k is no cheaper: the
# smoke budget samples 300 users of either).
DATASETS = ("ml-1m", "ml-100k")


@pytest.mark.notebook
@pytest.mark.parametrize("dataset", DATASETS)
def test_data_notebook_smoke(tmp_path, dataset):
    rows = _smoke("00_data", tmp_path, dataset=dataset)
    assert set(rows["method"]) == {"data"} and set(rows["dataset"]) == {dataset}
    # target_dataset defaults to ml-100k: with that as the source, the other one is the target
    said = "".join(o.get("text", "") for c in _read(tmp_path / "00_data.ipynb").cells
                   if c.cell_type == "code" for o in c.outputs)
    switched = "target_dataset 'ml-100k' is the source itself; using 'ml-1m' as the target."
    assert (switched in said) == (dataset == "ml-100k")
    value = rows.set_index(["group", "metric"])["value"]
    assert 0.2 < value["all", "gini"] < 0.9                 # MovieLens activeness is unequal
    assert abs(value["head", "user_share"] - 0.2) < 0.05    # top 20% by activeness
    assert value["head", "interaction_share"] > 0.4         # ...holding far more than 20%
    assert value["cold", "user_share"] == pytest.approx(0.1, abs=0.01)  # simulated cold start
    assert value["head", "user_share"] + value["tail", "user_share"] == pytest.approx(1.0)
    extra = _payload(tmp_path, "00_data")["extra"]
    if dataset == "ml-1m":
        # no user rates a film twice; the 5-core drops no user, a few hundred items
        assert extra["repeat_share"] == 0.0
        assert extra["counts"]["as read"] == [6040, 3706, 1000209]
        assert extra["counts"]["5/5-core"][0] == 6040 and extra["counts"]["5/5-core"][1] < 3706
    else:
        # ML-100K as packed (items named by title): films sharing a title make 307 repeats
        assert extra["repeat_share"] == pytest.approx(307 / 100000)
        assert extra["counts"]["as read"] == [943, 1664, 100000]
        assert extra["counts"]["5/5-core"][0] == 943 and extra["counts"]["5/5-core"][1] < 1664


@pytest.mark.notebook
@pytest.mark.parametrize("dataset", DATASETS)
def test_backbones_notebook_smoke(tmp_path, dataset):
    rows, backbones = _method_smoke("01_backbones", tmp_path, dataset)
    assert set(rows["dataset"]) == {dataset}
    assert set(rows["method"]) == _base_labels(backbones)
    _check_method_rows(rows, backbones)
    _check_baselines_and_verdicts(rows, _payload(tmp_path, "01_backbones"))


@pytest.mark.notebook
def test_backbones_notebook_on_own_csv_through_the_cli(tmp_path):
    """A user's log in the most common naming (user_id,item_id,timestamp; times in
    milliseconds), passed to the main job with -p dataset and nothing else."""
    from seqtransfer import cli, data

    ml = data.load("ml-100k")
    inter = ml.inter.assign(user_id=ml.user_ids[ml.inter["user"]],
                            item_id=ml.item_ids[ml.inter["item"] - 1],
                            timestamp=ml.inter["timestamp"] * 1000)
    csv = tmp_path / "shop_log.csv"
    inter[["user_id", "item_id", "timestamp", "rating"]].to_csv(csv, index=False)
    out = tmp_path / "out"
    code = cli.main(["run", "--budget", "smoke", "--only", "01_backbones", "--out", str(out),
                     "--device", "cpu", "-p", "dataset", str(csv), "-p", "cache_runs", "False"])
    assert code == 0, pd.read_csv(out / "status.csv").to_string()
    rows = pd.read_csv(out / "results.csv")
    assert set(rows["dataset"]) == {"shop_log"} and set(rows["method"]) == _base_labels()
    _check_method_rows(rows)
    _check_baselines_and_verdicts(rows, _payload(out, "01_backbones"))
    index = (out / "index.html").read_text()
    assert "sasrec tail-only<br><span class='ci'>baseline</span>" in index
    assert any(w in index for w in ("does NOT beat", " beats ", "no detectable difference"))


def _base_block(name: str) -> list[str]:
    """The setup cell's lines that configure the joint and tail-only base runs."""
    lines = _code(_read(SOURCES / report.NOTEBOOKS[name]))[2].splitlines()
    start = next(i for i, line in enumerate(lines) if 'runs[f"{name} joint"]' in line)
    return lines[start:start + 5]


@pytest.mark.unit
@pytest.mark.parametrize("name", ["02_gradient_alignment", "03_intervened_network"])
def test_method_notebook_shares_the_base_runs_of_notebook_01(name):
    # the run cache shares the base and tail-only models only when config and variant match
    block = _base_block("01_backbones")
    assert 'runs[f"{name} tail-only"]' in "\n".join(block)
    assert _base_block(name) == block


@pytest.mark.notebook
@pytest.mark.parametrize("dataset", DATASETS)
def test_gradient_alignment_notebook_smoke(tmp_path, dataset):
    # on ml-100k (two seeds) the null check trains once, as at quick: seed 0 at joint's rate
    once = dataset == "ml-100k"
    rows, backbones = _method_smoke("02_gradient_alignment", tmp_path, dataset, null_once=once)
    assert set(rows["dataset"]) == {dataset}
    assert set(rows["method"]) == _base_labels(backbones) | {f"gradient_alignment:{b} {v}" for b in backbones
                                                             for v in ("+align", "+adv", "GA", "null")}
    _check_method_rows(rows, backbones)
    _check_baselines_and_verdicts(rows, _payload(tmp_path, "02_gradient_alignment"))
    null = rows[rows["method"].str.endswith(" null")]
    joint = rows[rows["method"].str.endswith(" joint")]
    assert set(null["seed"]) == ({0} if once else set(joint["seed"]))
    if once:   # trained at joint's rate with joint's seed, the null check is joint's seed-0 run
        pd.testing.assert_series_equal(*(r[r["seed"] == 0].set_index(["group", "metric", "k"])["value"].sort_index()
                                         for r in (null, joint)))
        runs = _payload(tmp_path, "02_gradient_alignment")["extra"]["runs"]
        assert runs["sasrec null"]["lr"] == runs["sasrec joint"]["lr"]
        assert list(runs["sasrec null"]["stopped"]) == ["0"]


@pytest.mark.notebook
@pytest.mark.parametrize("dataset", DATASETS)
def test_intervened_notebook_smoke(tmp_path, dataset):
    rows, backbones = _method_smoke("03_intervened_network", tmp_path, dataset)
    assert set(rows["dataset"]) == {dataset}
    variants = ("aggregation", "plugins", "aggregation+plugins")
    assert set(rows["method"]) == _base_labels(backbones) | {f"intervened:{b} intervened ({v})"
                                                             for b in backbones for v in variants}
    assert not rows["method"].str.contains(r"\[").any()          # sensitivity runs are not recorded
    _check_method_rows(rows, backbones)
    _check_baselines_and_verdicts(rows, _payload(tmp_path, "03_intervened_network"))
