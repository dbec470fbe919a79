import pytest

from seqtransfer import bench

pytestmark = pytest.mark.unit


def test_bench_smoke_prints_figures(capsys):
    assert bench.main(["--budget", "smoke", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for label in ("epoch time", "training positions/s", "full-ranking eval", "test  NDCG@10"):
        assert label in out
