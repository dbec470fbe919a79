"""The shared result helpers that notebooks print their verdicts with."""
import numpy as np
import pandas as pd
import pytest
import torch

from seqtransfer.methods import (MethodResult, compare, convergence_sentence, gap_sentence, still_improving,
                                 stopped_by_cap, summarize, transfer_verdict, verdict_sentence)
from seqtransfer.train import TrainResult

pytestmark = pytest.mark.unit


def _metrics(variant: str, values: dict[str, list[float]]) -> pd.DataFrame:
    """Test NDCG@10 rows of one variant, one seed per list entry."""
    rows = [{"split": "test", "group": g, "metric": "ndcg", "k": 10, "value": v, "variant": variant, "seed": s}
            for g, vs in values.items() for s, v in enumerate(vs)]
    return pd.DataFrame(rows)


def test_summarize_gives_mean_and_t_interval_over_seeds():
    table = summarize(_metrics("a", {"all": [0.1, 0.2, 0.3]}))
    row = table.iloc[0]
    assert row["mean"] == pytest.approx(0.2) and row["n_seeds"] == 3
    assert row["ci95"] == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-4)  # t(2) * sd / sqrt(n)
    assert np.isnan(summarize(_metrics("b", {"all": [0.1]}))["ci95"].iloc[0])


def test_one_seed_without_ranks_gives_no_verdict_and_the_gap():
    table = summarize(pd.concat([_metrics("base", {"tail": [0.10], "head": [0.20]}),
                                 _metrics("ours", {"tail": [0.12], "head": [0.15]})]))
    text = transfer_verdict(table, "ours", "base", "tail")
    assert text == ("ours vs base for tail users: NDCG@10 0.1200 vs 0.1000 (+20.0%); no interval "
                    "(one run each and no per-user ranks), so no verdict (one seed: seed noise not measured).")
    assert "has no cold" in transfer_verdict(table, "ours", "base", "cold")
    assert gap_sentence(table, "base") == "base: head NDCG@10 0.2000, tail 0.1000 (tail/head = 0.50)."


def test_seed_intervals_name_transfer_only_beyond_the_noise():
    # three seeds each; ci95 = t(2) * sd / sqrt(3); combined half-width sqrt(ci_a^2 + ci_b^2)
    clear = summarize(pd.concat([_metrics("base", {"tail": [0.10, 0.11, 0.12]}),
                                 _metrics("ours", {"tail": [0.20, 0.21, 0.22]})]))
    half = np.hypot(*clear["ci95"])
    assert half == pytest.approx(np.sqrt(2) * 4.3027 * 0.01 / np.sqrt(3), rel=1e-4)
    assert transfer_verdict(clear, "ours", "base", "tail").endswith(
        f"difference +0.1000, 95% CI over seeds [{0.1 - half:+.4f}, {0.1 + half:+.4f}] -- positive transfer.")
    noisy = summarize(pd.concat([_metrics("base", {"tail": [0.10, 0.11, 0.12]}),
                                 _metrics("ours", {"tail": [0.105, 0.115, 0.125]})]))
    assert transfer_verdict(noisy, "ours", "base", "tail").endswith(
        f"no detectable difference (\u00b1{np.hypot(*noisy['ci95']):.4f}).")
    worse = summarize(pd.concat([_metrics("base", {"tail": [0.20, 0.21, 0.22]}),
                                 _metrics("ours", {"tail": [0.10, 0.11, 0.12]})]))
    assert transfer_verdict(worse, "ours", "base", "tail").endswith("-- negative transfer.")


def _ranked(variant, seed, ranks):
    return MethodResult("toy", variant, seed, pd.DataFrame(), pd.DataFrame(), torch.nn.Linear(1, 1),
                        ranks={"test": np.asarray(ranks)})


def test_compare_pairs_users_and_seeds_and_names_transfer_only_outside_the_interval():
    U = 200
    groups = {"all": np.ones(U, bool), "tail": np.arange(U) < 100}
    base = [_ranked("b", s, np.full(U, 1)) for s in (0, 1)]                    # HR@1 = 0 everywhere
    # ours hits every tail user in both seeds, never a head user: tail +1 exactly, no noise
    ours = [_ranked("a", s, np.where(np.arange(U) < 100, 0, 1)) for s in (0, 1)]
    table = compare(base + ours, "a", "b", groups, metric="hr", k=1)
    tail = table[table["group"] == "tail"].iloc[0]
    assert (tail["a"], tail["b"], tail["diff"], tail["lo"], tail["hi"]) == (1.0, 0.0, 1.0, 1.0, 1.0)
    assert tail["n_seeds"] == 2 and tail["n_users"] == 100 and tail["verdict"] == "positive"
    assert tail["seed_ci95"] == 0.0
    everyone = table[table["group"] == "all"].iloc[0]
    assert everyone["diff"] == 0.5 and everyone["lo"] < 0.5 < everyone["hi"] and everyone["lo"] > 0
    assert verdict_sentence(tail).endswith(
        "difference +1.0000, 95% CI over users [+1.0000, +1.0000], over seeds [+1.0000, +1.0000]; "
        "per seed +1.000, +1.000 over seeds 0, 1 -- positive transfer.")
    assert tail["seeds"] == (0, 1) and tail["seed_diffs"] == (1.0, 1.0)
    # the base hits the even users, ours the odd ones: per-user +-1, mean 0, interval around 0
    mixed = [_ranked("m", s, np.arange(U) % 2 == 0) for s in (0, 1)]
    base1 = [_ranked("b", s, np.arange(U) % 2 == 1) for s in (0, 1)]
    row = compare(base1 + mixed, "m", "b", {"all": np.ones(U, bool)}, metric="hr", k=1).iloc[0]
    assert row["diff"] == 0.0 and row["lo"] < 0 < row["hi"] and row["verdict"] == "none"
    assert "no detectable difference" in verdict_sentence(row)
    empty = compare(base + ours, "a", "b", {"none": np.zeros(U, bool)}, metric="hr", k=1).iloc[0]
    assert empty["n_users"] == 0 and verdict_sentence(empty) == "a vs b: no none users to compare on."
    same = compare(base + [_ranked("c", s, np.full(U, 1)) for s in (0, 1)], "c", "b", groups, metric="hr", k=1)
    assert verdict_sentence(same.iloc[0]).endswith("-- the same result for every user.")
    # seed spread: seed 0 hits every tail user, seed 1 half of them -> per-seed +1.0 and +0.5
    uneven = [_ranked("u", 0, np.where(np.arange(U) < 100, 0, 1)), _ranked("u", 1, np.where(np.arange(U) < 50, 0, 1))]
    row = compare(base + uneven, "u", "b", {"tail": groups["tail"]}, metric="hr", k=1).iloc[0]
    assert row["diff"] == 0.75 and row["seed_ci95"] == pytest.approx(12.7062 * 0.5 / np.sqrt(2) / np.sqrt(2), rel=1e-4)
    # per-user pairing, not per-seed means: seed 1 of "a" is unpaired and ignored
    extra = ours + [_ranked("a", 7, np.zeros(U))]
    assert compare(base + extra, "a", "b", groups, metric="hr", k=1)["n_seeds"].iloc[0] == 2


def test_a_verdict_sentence_carries_the_seeds():
    """Per-seed differences beside the interval; a difference that every seed's users call an
    effect, but that the seeds do not agree on, is no detectable difference; one seed says so."""
    U = 300
    groups = {"all": np.ones(U, bool)}
    base = [_ranked("b", s, np.full(U, 1)) for s in range(3)]
    hits = {0: 150, 1: 120, 2: 135}             # seed s of "a" hits the first hits[s] users: +0.5, +0.4, +0.45
    ours = [_ranked("a", s, np.where(np.arange(U) < n, 0, 1)) for s, n in hits.items()]
    row = compare(base + ours, "a", "b", groups, metric="hr", k=1).iloc[0]
    assert row["seed_diffs"] == pytest.approx((0.5, 0.4, 0.45)) and row["lo"] > 0 and row["verdict"] == "positive"
    text = verdict_sentence(row)
    assert text.startswith("a beats b for all users") and "per seed +0.500, +0.400, +0.450 over seeds 0-2" in text
    # seed 1 now loses to its base on the users it won on: seeds +0.5, -0.4, +0.45
    flip = ours[:1] + [_ranked("a", 1, np.full(U, 1))] + ours[2:]
    base_flip = base[:1] + [_ranked("b", 1, np.where(np.arange(U) < 120, 0, 1))] + base[2:]
    row = compare(base_flip + flip, "a", "b", groups, metric="hr", k=1).iloc[0]
    assert row["seed_diffs"] == pytest.approx((0.5, -0.4, 0.45)) and row["lo"] > 0 and row["verdict"] == "none"
    text = verdict_sentence(row)
    assert "no detectable difference" in text and "seed noise" in text and "over seeds 0-2" in text
    one = compare(base[:1] + ours[:1], "a", "b", groups, metric="hr", k=1).iloc[0]
    assert one["n_seeds"] == 1 and one["verdict"] == "positive"
    assert verdict_sentence(one).endswith("-- positive transfer (one seed: seed noise not measured).")


def test_compare_without_ranks_recomputes_or_says_so(toy_csv):
    from seqtransfer import data
    from seqtransfer.evaluate import rank_targets
    from seqtransfer.models import make_backbone
    sd = data.build_sequences(data.leave_one_out(data.load(toy_csv, min_user=1, min_item=1)), max_len=6)
    torch.manual_seed(0)
    model = make_backbone("gru4rec", sd.n_items, dim=8)
    old = [MethodResult("toy", v, 0, pd.DataFrame(), pd.DataFrame(), model) for v in ("a", "b")]
    del old[0].__dict__["ranks"]                                   # a pickle from before ranks were kept
    groups = {"all": np.ones(sd.n_users, bool)}
    with pytest.raises(ValueError, match="no per-user test ranks.*data="):
        compare(old, "a", "b", groups)
    row = compare(old, "a", "b", groups, data=sd).iloc[0]
    assert row["diff"] == 0.0                                      # same weights, same ranks
    assert np.array_equal(old[0].ranks["test"], rank_targets(old[0].model, sd, "test"))


def _stopped(variant: str, *reasons: str) -> MethodResult:
    """A run whose training stages ended for ``reasons`` (one: plain; several: staged)."""
    model = torch.nn.Linear(1, 1)
    train = TrainResult(model, pd.DataFrame(), 0, 0.1, reasons[-1], "cpu", 1.0, 1)
    diagnostics = {"stages": pd.DataFrame({"stage": range(len(reasons)), "stopped": reasons})} if len(reasons) > 1 else {}
    return MethodResult("toy", variant, 0, pd.DataFrame(), pd.DataFrame(), model, train, diagnostics)


def test_models_stopped_by_a_cap_are_named():
    early = "early stop: no better valid NDCG@10 for 5 evaluations"
    converged = _stopped("early-stopped", early)
    capped = _stopped("capped", "max_minutes=10.0")
    two_stage = _stopped("plugins", "epochs=200", early)      # stage 1 hit its epoch cap
    assert stopped_by_cap(converged) == [] and stopped_by_cap(two_stage) == ["epochs=200"]
    assert still_improving([converged, capped, two_stage]) == ["capped", "plugins"]
    assert convergence_sentence([converged]).startswith("Every model stopped early")
    text = convergence_sentence([converged, capped])
    assert text.startswith("1 of 2 models were stopped by a cap (max_minutes=10.0)") and "capped" in text
    assert convergence_sentence([capped]).startswith("The model was stopped by a cap")
    assert convergence_sentence([capped, two_stage]).startswith("All 2 models were")


@pytest.mark.unit
def test_setting_summary_names_negative_transfer_only_outside_the_noise():
    from seqtransfer.methods.common import setting_summary

    def row(v, a, lo, hi, group="all"):
        return {"variant": f"T | {v}", "baseline": "T | scratch", "group": group, "metric": "ndcg", "k": 10,
                "a": a, "b": 0.20, "diff": a - 0.20, "lo": lo, "hi": hi}
    table = pd.DataFrame([row("fine-tune", 0.15, -0.08, -0.02),        # below, interval below zero
                          row("re-learn", 0.19, -0.03, 0.01),          # below, but inside the noise
                          row("adaptor", 0.24, 0.01, 0.07),            # above zero
                          row("fine-tune", 0.50, 0.2, 0.4, group="tail")])
    text = setting_summary(table, "T", "T | scratch")
    assert text == ("T: best adaptor (all NDCG@10 0.2400); against scratch (0.2000), 95% interval over users "
                    "(one seed: seed noise not measured): "
                    "negative transfer for fine-tune; positive transfer for adaptor; "
                    "no detectable difference for re-learn.")
    assert "best scratch" in setting_summary(table[table["variant"] != "T | adaptor"], "T", "T | scratch")
    assert setting_summary(table, "T", "T | other") == "T: no all NDCG@10 comparison with T | other."


def _searched(variant, lrs, valids, seed=0):
    import pandas as pd
    from seqtransfer.methods.common import MethodResult
    best = max(range(len(lrs)), key=lambda j: valids[j])
    r = MethodResult("fake", variant, seed, pd.DataFrame(), pd.DataFrame(), None, lr=lrs[best])
    r.tuning = pd.DataFrame({"variant": variant, "lr": lrs, "valid_ndcg10": valids,
                             "chosen": [j == best for j in range(len(lrs))], "seconds": 1.0, "search": "grid"})
    return r


@pytest.mark.unit
def test_tuning_note_names_the_arms_that_chose_an_end_of_their_grid():
    from seqtransfer.methods.common import tuning_note
    grid = [1.5e-3, 3e-3, 6e-3]
    inside = _searched("a", grid, [0.1, 0.3, 0.2])
    top = _searched("b", grid, [0.1, 0.2, 0.3])
    bottom = _searched("c", grid, [0.3, 0.2, 0.1])
    assert tuning_note([inside]) == "Every one of the 1 searched arms chose a rate inside its grid."
    note = tuning_note([inside, top, bottom, _searched("b", grid, [0.3, 0.2, 0.1], seed=1)])
    assert note.startswith("Of 3 searched arms, 1 its largest: b (0.006); 1 its smallest: c (0.0015).")
