import pytest

from seqtransfer import bench

pytestmark = pytest.mark.unit


def test_bench_compare_prints_every_figure_for_both_recipes(capsys):
    assert bench.main(["--max-users", "40", "--epochs", "1", "--backbones", "sasrec", "--compare",
                       "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for label in ("valid NDCG@10 >= 0.15", "epoch time", "training positions/s", "full-ranking eval",
                  "peak RSS", "test  NDCG@10", "test  HR@10", "stopped (sasrec old): epochs=1",
                  "stopped (sasrec new): epochs=1"):
        assert label in out
    header = next(line for line in out.splitlines() if "sasrec old" in line and "ratio" in line)
    assert header.index("sasrec old") < header.index("sasrec new")


def test_bench_levers_time_each_lever(capsys):
    assert bench.main(["--max-users", "40", "--levers", "--no-compile", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for lever in ("windows 200, CE (old)", "windows 50, CE (default)", "sampled softmax, 512", "fused AdamW",
                  "bf16 autocast", "1 thread"):
        assert lever in out
    assert "torch.compile" not in out


def test_recipes_differ_where_the_issue_says():
    new = bench.new_recipe()
    assert (bench.OLD_RECIPE.max_len, bench.OLD_RECIPE.lr, bench.OLD_RECIPE.epochs) == (200, 1e-3, 4)
    assert new.max_len == 50 and new.loss_type == "ce" and new.epochs > 4 and new.warmup_steps > 0


def test_time_to_levels_reads_the_first_validation_at_each_fraction_of_the_floor():
    import pandas as pd
    h = pd.DataFrame({"valid_ndcg10": [0.10, 0.45, 0.49, 0.50, 0.40], "seconds": [10.0, 20.0, 30.0, 40.0, 50.0]})
    # floor 0.5: 90% is 0.45 (first at 20 s), 98% is 0.49 (first at 30 s); 120% is never reached
    to = bench.time_to_levels(h, 0.5, (0.9, 0.98, 1.2))
    assert to[:2] == [20.0, 30.0] and pd.isna(to[2])


def test_bench_dropout_names_an_unknown_model_and_trains_nothing(capsys):
    assert bench.main(["--dropout", "sasrec,gru"]) == 2
    err = capsys.readouterr().err
    assert "unknown model(s) ['gru']" in err and "sasrec, content, metarec" in err
