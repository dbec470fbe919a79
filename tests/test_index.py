"""The batch index: each row against its own baseline (values checked by hand), the rule that
finds a baseline, verdicts under their notebook, and the leaderboard chart's labels."""
from __future__ import annotations

import io
import math
import re

import pandas as pd
import pytest

from seqtransfer import index, report
from seqtransfer.stats import t_quantile

# A hand-made results.csv. 01: tail-only against the joint model (recorded baseline), two seeds;
# seed 2 of tail-only has no joint partner and must be ignored. 02 records the same tail-only
# rows again (counted once, under 01) and GA. 04: no baseline column values; the rule finds
# "sasrec from scratch" (one seed); "zero" has a baseline of 0 for HR@10 all.
RESULTS = """notebook,method,dataset,backbone,seed,group,metric,k,value,n_users,baseline
01_backbones,baseline:sasrec joint,ml,sasrec,0,all,ndcg,10,0.20,,
01_backbones,baseline:sasrec joint,ml,sasrec,1,all,ndcg,10,0.25,,
01_backbones,baseline:sasrec joint,ml,sasrec,0,tail,hr,10,0.40,,
01_backbones,baseline:sasrec joint,ml,sasrec,1,tail,hr,10,0.50,,
01_backbones,baseline:sasrec tail-only,ml,sasrec,0,all,ndcg,10,0.18,,baseline:sasrec joint
01_backbones,baseline:sasrec tail-only,ml,sasrec,1,all,ndcg,10,0.25,,baseline:sasrec joint
01_backbones,baseline:sasrec tail-only,ml,sasrec,2,all,ndcg,10,0.90,,baseline:sasrec joint
01_backbones,baseline:sasrec tail-only,ml,sasrec,0,tail,hr,10,0.44,,baseline:sasrec joint
01_backbones,baseline:sasrec tail-only,ml,sasrec,1,tail,hr,10,0.55,,baseline:sasrec joint
01_backbones,baseline:sasrec tail-only,ml,sasrec,0,all,ndcg,5,0.99,,baseline:sasrec joint
02_ga,baseline:sasrec joint,ml,sasrec,0,all,ndcg,10,0.20,,
02_ga,baseline:sasrec tail-only,ml,sasrec,0,all,ndcg,10,0.18,,baseline:sasrec joint
02_ga,gradient_alignment:sasrec GA,ml,sasrec,0,all,ndcg,10,0.21,,baseline:sasrec joint
04_x,x:sasrec from scratch,ml,sasrec,0,all,ndcg,10,0.04,,
04_x,x:sasrec fine-tune,ml,sasrec,0,all,ndcg,10,0.05,,
04_x,x:sasrec from scratch,ml,sasrec,0,all,hr,10,0.0,,
04_x,x:sasrec fine-tune,ml,sasrec,0,all,hr,10,0.1,,
00_data,data,ml,none,0,all,gini,0,0.5,,
"""


def results() -> pd.DataFrame:
    return pd.read_csv(io.StringIO(RESULTS))


@pytest.mark.unit
def test_default_baseline_keeps_recorded_ones_and_derives_the_rest():
    res = results()
    base = index.default_baseline(res)
    by_method = dict(zip(res["method"] + "@" + res["notebook"], base))
    assert by_method["baseline:sasrec tail-only@01_backbones"] == "baseline:sasrec joint"
    assert by_method["x:sasrec fine-tune@04_x"] == "x:sasrec from scratch"      # by rule
    assert pd.isna(by_method["x:sasrec from scratch@04_x"])                    # never its own
    assert pd.isna(by_method["baseline:sasrec joint@01_backbones"])
    assert pd.isna(by_method["data@00_data"])                                  # no variant


@pytest.mark.unit
def test_change_table_by_hand():
    table = index.change_table(results()).set_index("method")
    assert list(table.index) == ["baseline:sasrec tail-only", "gradient_alignment:sasrec GA",
                                 "x:sasrec fine-tune"]
    tail_only = table.loc["baseline:sasrec tail-only"]
    assert tail_only["notebook"] == "01_backbones" and tail_only["seeds"] == 2   # seed 2 unpaired
    # NDCG@10 all per seed: (0.18 - 0.20) / 0.20 = -0.10 and (0.25 - 0.25) / 0.25 = 0
    assert tail_only["ndcg@10 all"] == pytest.approx(-0.05)
    # two values -0.1 and 0: sd = 0.1 / sqrt(2); half-width t(1) * sd / sqrt(2) = 12.706 * 0.05
    assert tail_only["ndcg@10 all ci95"] == pytest.approx(t_quantile(1) * 0.05)
    # HR@10 tail: (0.44 - 0.40) / 0.40 = 0.10 and (0.55 - 0.50) / 0.50 = 0.10: no spread
    assert tail_only["hr@10 tail"] == pytest.approx(0.10)
    assert tail_only["hr@10 tail ci95"] == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(tail_only["ndcg@10 head"])                # nothing recorded there
    ga = table.loc["gradient_alignment:sasrec GA"]
    # 02's seed 0 joint (0.20, the same value 01 recorded) -> (0.21 - 0.20) / 0.20
    assert ga["ndcg@10 all"] == pytest.approx(0.05) and math.isnan(ga["ndcg@10 all ci95"])
    fine = table.loc["x:sasrec fine-tune"]
    assert fine["baseline"] == "x:sasrec from scratch"
    assert fine["ndcg@10 all"] == pytest.approx(0.25)           # 0.05 against 0.04
    assert math.isnan(fine["hr@10 all"])                        # a baseline of 0: no ratio


@pytest.mark.unit
def test_index_leads_with_changes_and_verdicts_under_their_notebook(tmp_path):
    status = pd.DataFrame([
        {"notebook": n, "status": "ok", "seconds": 1.0, "attempts": 1, "error": "", "html": f"{n}.html"}
        for n in ("00_data", "01_backbones", "02_ga", "04_x")], columns=list(report.STATUS_COLUMNS))
    verdicts = {"01_backbones": ["sasrec tail-only does NOT beat sasrec joint -- negative transfer."],
                "04_x": ["fine-tune beats from scratch."]}
    # the 04_x notebook recorded a comparison over 3 seeds for fine-tune vs from scratch, NDCG@10
    # all: b = 0.04, users [-0.02, -0.004], seeds [-0.018, -0.006]: both exclude zero -> negative,
    # half-width of their union 0.008 / 0.04 = 20%.
    boot = pd.DataFrame([{"notebook": "04_x", "variant": "sasrec fine-tune", "baseline": "sasrec from scratch",
                          "group": "all", "metric": "ndcg", "k": 10, "a": 0.05, "b": 0.04, "diff": 0.01,
                          "lo": -0.02, "hi": -0.004, "verdict": "negative", "n_seeds": 3,
                          "seed_lo": -0.018, "seed_hi": -0.006}])
    page = report.write_index(tmp_path, status, results(), verdicts=verdicts, comparisons=boot).read_text()
    changes, board = page.index("What each method changed"), page.index("<h2>Leaderboard")
    assert changes < board < page.index("<h2>Notebooks")
    # coloured only where the interval excludes zero: -5% +- 63.5 (two seeds) is no finding
    assert "<td class='num none'>-5.0%<br><span class='ci'>&plusmn; 63.5</span></td>" in page
    assert "<td class='num pos'>+10.0%<br><span class='ci'>&plusmn; 0.0</span></td>" in page
    # the recorded bootstrap decides the colour and the interval, not the sign of the change
    assert "<td class='num neg'>+25.0%<br><span class='ci'>&plusmn; 20.0</span></td>" in page
    # one seed and no bootstrap: shown, uncoloured, said to have no interval
    assert "<td class='num none'>+5.0%<br><span class='ci' title='one run: no interval'>no interval</span></td>" in page
    # each notebook: its line, its rows, then its verdicts; 00_data compared nothing
    section = page[changes:board]
    assert "00_data" not in section
    order = [section.index(s) for s in ("01_backbones", "sasrec tail-only<br><span class='ci'>baseline",
                                        "negative transfer.", "02_ga", "04_x",
                                        "sasrec fine-tune<br><span class='ci'>x</span>",
                                        "fine-tune beats from scratch.")]
    assert order == sorted(order)


@pytest.mark.unit
def test_a_change_cell_is_coloured_only_on_the_verdict_rule():
    """A recorded comparison colours by its verdict only with several seeds; one seed is left
    uncoloured and marked; the union of the users' and the seeds' interval gives the width."""
    row = {"notebook": "n", "variant": "v", "baseline": "b", "group": "all", "metric": "ndcg", "k": 10,
           "a": 0.05, "b": 0.04, "diff": 0.01, "lo": 0.004, "hi": 0.02, "verdict": "positive"}
    three = {**row, "n_seeds": 3, "seed_lo": 0.002, "seed_hi": 0.018}
    half, verdict, seeds = index._interval_lookup(pd.DataFrame([three]))["n", "v", "b", "ndcg@10 all"]
    assert (half, verdict, seeds) == (pytest.approx(0.009 / 0.04), "positive", 3)   # union [0.002, 0.02]
    assert index._change_class(0.25, float("nan"), (half, verdict, seeds))[0] == "num pos"
    one = index._interval_lookup(pd.DataFrame([{**row, "n_seeds": 1}]))["n", "v", "b", "ndcg@10 all"]
    cls, text = index._change_class(0.25, float("nan"), one)
    assert cls == "num none" and "one seed" in text and "seed noise not measured" in text
    old = index._interval_lookup(pd.DataFrame([row]))["n", "v", "b", "ndcg@10 all"]   # no n_seeds recorded
    assert index._change_class(0.25, float("nan"), old)[0] == "num none"


@pytest.mark.unit
def test_leaderboard_figure_gives_every_label_its_own_line():
    board = report.leaderboard(results())
    fig = index._leaderboard_figure(board)
    assert all(t.orientation == "h" for t in fig.data)
    labels = list(fig.data[0].y)
    assert len(labels) == len(set(labels)) == len(board)
    # 3 bars of 18 px a label: a 12 px label never shares its band with the next one
    assert fig.layout.height >= 110 + 3 * 18 * len(labels)
    assert fig.layout.yaxis.automargin and fig.layout.xaxis2.matches is None


@pytest.mark.browser
def test_leaderboard_labels_do_not_overlap_in_chromium(tmp_path, chromium_dom):
    rows = [{"notebook": "nb", "method": f"method:sasrec variant number {i} with a long name",
             "dataset": "ml", "backbone": "sasrec", "seed": 0, "group": g, "metric": m, "k": 10,
             "value": 0.01 * i + 0.001 * j}
            for i in range(30) for j, g in enumerate(("all", "head", "tail")) for m in ("ndcg", "hr")]
    status = pd.DataFrame([{"notebook": "nb", "status": "ok", "seconds": 1.0, "attempts": 1,
                            "error": "", "html": ""}])
    page = report.write_index(tmp_path, status, pd.DataFrame(rows))
    dom = chromium_dom(page)
    ys = [float(y) for y in re.findall(r'class="ytick"><text[^>]*transform="translate\([\d.]+,\s*([\d.]+)\)', dom)]
    if not ys:
        ys = [float(y) for y in re.findall(r'class="ytick">.*?<text[^>]*\by="([\d.]+)"', dom)]
    assert len(ys) == 30, "every row has its tick label"
    gaps = [b - a for a, b in zip(sorted(ys), sorted(ys)[1:])]
    assert min(gaps) >= 14, f"tick labels closer than a 12 px line: {min(gaps)}"
