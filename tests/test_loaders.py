"""Loading a user's own interaction file: column names in each common naming, times in
seconds, milliseconds and datetime strings, ties, extra columns, repeats and filtering."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seqtransfer import data
from seqtransfer.data import DataError
from seqtransfer.data.userfiles import detect_columns, parse_times

pytestmark = pytest.mark.unit

# user a: x at 1, y at 2, z at 3; user b: x at 2, z at 5 (seconds); written out of time order
ROWS = [("a", "z", 3), ("b", "z", 5), ("a", "x", 1), ("b", "x", 2), ("a", "y", 2)]


def _write(tmp_path, header: str, rows, name="inter.csv", sep=","):
    path = tmp_path / name
    path.write_text(header + "\n" + "\n".join(sep.join(map(str, r)) for r in rows) + "\n")
    return path


def _sequences(ds) -> dict[str, list[str]]:
    """Raw user id -> raw item ids in the order the table holds them (time order)."""
    raw = ds.item_ids
    return {ds.user_ids[u]: [raw[i - 1] for i in g["item"]] for u, g in ds.inter.groupby("user")}


EXPECTED = {"a": ["x", "y", "z"], "b": ["x", "z"]}


@pytest.mark.parametrize("header,sep,name", [
    ("user_id,item_id,timestamp", ",", "inter.csv"),
    ("userId,movieId,timestamp", ",", "ratings.csv"),
    ("UID;ASIN;Time", ";", "inter.csv"),
    ("user_id:token\titem_id:token\ttimestamp:float", "\t", "data.inter"),   # RecBole atomic
])
def test_columns_detected_in_each_naming(tmp_path, header, sep, name):
    ds = data.load(_write(tmp_path, header, ROWS, name, sep), min_user=1, min_item=1)
    assert _sequences(ds) == EXPECTED
    assert ds.inter["timestamp"].tolist() == [1, 2, 3, 2, 5]
    assert list(ds.meta["columns"].values()) == header.split(sep)


def test_detection_rules():
    assert detect_columns(["userId", "movieId", "rating", "timestamp"], "f") == \
        {"user": "userId", "item": "movieId", "timestamp": "timestamp"}
    # an explicit name wins over detection, and is matched case-insensitively
    assert detect_columns(["u", "i", "when"], "f", "u", "I", "WHEN") == \
        {"user": "u", "item": "i", "timestamp": "when"}
    with pytest.raises(DataError, match=r"no user column .*user_col="):
        detect_columns(["person", "item", "ts"], "f")
    with pytest.raises(DataError, match=r"no column 'visitor' \(user_col\)"):
        detect_columns(["user", "item", "ts"], "f", user_col="visitor")


def test_ambiguous_header_names_both_candidates_and_the_parameter(tmp_path):
    path = _write(tmp_path, "user_id,item_id,timestamp,date", [("a", "x", 1, "2024-01-01")])
    with pytest.raises(DataError, match=r"'timestamp' and 'date'; choose one with time_col="):
        data.load(path, min_user=1, min_item=1)
    ds = data.load(path, min_user=1, min_item=1, time_col="date")
    assert ds.inter["timestamp"].tolist() == [1704067200]        # 2024-01-01 00:00 UTC
    assert ds.meta["ignored"] == [] and ds.meta["item_columns"] == ["timestamp"]


def test_milliseconds_detected_and_said(tmp_path):
    rows = [(u, i, t * 1000 + 1_600_000_000_000) for u, i, t in ROWS]   # ms since the epoch
    ds = data.load(_write(tmp_path, "user,item,timestamp", rows), min_user=1, min_item=1)
    assert ds.inter["timestamp"].tolist() == [1_600_000_001, 1_600_000_002, 1_600_000_003,
                                              1_600_000_002, 1_600_000_005]
    assert ds.meta["time"].startswith("milliseconds")
    assert _sequences(ds) == EXPECTED


def test_time_units_and_datetimes_by_hand():
    _, sec, how = parse_times(pd.Series(["978300760", "978300761.9"]), "f")
    assert sec.tolist() == [978300760, 978300761] and how == "seconds"
    _, sec, how = parse_times(pd.Series(["99999999999"]), "f")     # just under 1e11 s: seconds
    assert sec.tolist() == [99999999999] and how == "seconds"
    _, sec, how = parse_times(pd.Series(["100000000000"]), "f")    # 1e11: milliseconds
    assert sec.tolist() == [100000000] and how.startswith("milliseconds")
    _, sec, _ = parse_times(pd.Series(["1700000000000000"]), "f")   # microseconds
    assert sec.tolist() == [1700000000]
    # ISO strings with and without a zone (naive = UTC), and another common format
    _, sec, how = parse_times(pd.Series(["2024-01-01T00:00:10", "2024-01-01T01:00:10+01:00"]), "f")
    assert sec.tolist() == [1704067210, 1704067210] and how.startswith("datetime")
    _, sec, _ = parse_times(pd.Series(["2024-01-01 00:00:00", "01/02/2024"]), "f")
    assert sec.tolist() == [1704067200, 1704067200 + 86400]
    with pytest.raises(DataError, match=r"neither numbers nor dates \(first: 'yesterday'"):
        parse_times(pd.Series(["2024-01-01", "yesterday"]), "f")
    with pytest.raises(DataError, match="empty time"):
        parse_times(pd.Series(["1", " "]), "f")


def test_datetime_strings_order_within_a_second_and_ties_keep_file_order(tmp_path):
    # user a: q and p at the same instant (file order q, p); r half a second before them; the
    # whole seconds are all equal, so only the precise times can put r first
    rows = [("a", "q", "2024-03-01 10:00:00.700"), ("a", "p", "2024-03-01 10:00:00.700"),
            ("a", "r", "2024-03-01 10:00:00.200"), ("b", "p", "2024-03-01 09:00:00")]
    ds = data.load(_write(tmp_path, "customer_id,product_id,event_time", rows), min_user=1, min_item=1)
    assert _sequences(ds) == {"a": ["r", "q", "p"], "b": ["p"]}
    assert ds.meta["time"].startswith("datetime")


def test_equal_integer_times_keep_file_order(tmp_path):
    rows = [("a", "c", 7), ("a", "b", 7), ("a", "a", 7), ("a", "d", 1)]
    ds = data.load(_write(tmp_path, "user,item,ts", rows), min_user=1, min_item=1)
    assert _sequences(ds) == {"a": ["d", "c", "b", "a"]}


def test_extra_columns_kept_or_ignored_never_an_error(tmp_path):
    rows = [("a", "x", 1, 4.0, 9.99, "web", "Red"), ("a", "y", 2, 5.0, 1.50, "app", "Blue"),
            ("b", "x", 3, 2.0, 9.99, "app", "Red")]
    header = "user_id,item_id,timestamp,rating,price,channel,title"
    ds = data.load(_write(tmp_path, header, rows), min_user=1, min_item=1)
    assert ds.inter["rating"].tolist() == [4.0, 5.0, 2.0]
    # price and title have one value per item: item side information; channel varies
    assert ds.meta["item_columns"] == ["price", "title"] and ds.meta["ignored"] == ["channel"]
    items = ds.items.set_index("raw_id")
    assert items.loc["x", "title"] == "Red" and items.loc["y", "price"] == "1.5"


def test_parquet_with_datetime_column(tmp_path):
    df = pd.DataFrame({"userId": ["a", "a", "b"], "asin": ["x", "y", "x"],
                       "datetime": pd.to_datetime(["2024-01-01 00:00:01", "2024-01-01 00:00:02",
                                                   "2024-01-02 00:00:00"])})
    df.to_parquet(tmp_path / "log.parquet")
    ds = data.load(tmp_path / "log.parquet", min_user=1, min_item=1)
    assert ds.inter["timestamp"].tolist() == [1704067201, 1704067202, 1704153600]


def test_repeats_share_and_protocol(tmp_path):
    # a buys x, y, x again, z; b buys x, x: 2 of 6 interactions are repeats
    rows = [("a", "x", 1), ("a", "y", 2), ("a", "x", 3), ("a", "z", 4), ("b", "x", 1), ("b", "x", 2)]
    path = _write(tmp_path, "user_id,item_id,timestamp", rows)
    first = data.load(path, min_user=1, min_item=1)
    assert first.meta["repeat_share"] == pytest.approx(2 / 6)
    assert _sequences(first) == {"a": ["x", "y", "z"], "b": ["x"]}   # first interaction kept
    kept = data.load(path, min_user=1, min_item=1, dedupe=False)
    assert kept.meta["repeat_share"] == pytest.approx(2 / 6)
    assert _sequences(kept) == {"a": ["x", "y", "x", "z"], "b": ["x", "x"]}


def test_filtering_counts_what_each_step_dropped(tmp_path):
    rows = [("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "x", 1), ("b", "y", 2), ("b", "z", 3),
            ("c", "x", 1), ("c", "y", 2), ("c", "w", 3), ("a", "x", 4), ("d", "v", 1), ("d", "x", 2)]
    ds = data.load(_write(tmp_path, "user,item,timestamp", rows), min_user=2, min_item=2)
    table = ds.filtering()
    assert table.loc["as read"].tolist() == [4, 5, 12]
    assert table.loc["repeats dropped"].tolist() == [4, 5, 11]           # a's second x
    assert table.loc["dropped: repeats dropped"].tolist() == [0, 0, 1]
    # 2-core by hand: w and v have one interaction each and go; d is then left with x alone
    # and goes; x, y, z keep >= 2 (x: a, b, c), so a, b, c stay with 3 + 3 + 2 interactions
    assert table.loc["2/2-core"].tolist() == [3, 3, 8]
    assert table.loc["dropped: 2/2-core"].tolist() == [1, 2, 3]
    assert ds.n_users == 3 and ds.n_items == 3 and len(ds.inter) == 8


def test_bad_parameters_and_files(tmp_path):
    with pytest.raises(DataError, match="user_col name columns of a CSV/Parquet file"):
        data.load("ml-100k", user_col="userId")
    with pytest.raises(ValueError, match="min_user must be a positive integer"):
        data.load("ml-100k", min_user=0)
    with pytest.raises(DataError, match="has no interactions"):
        data.load(_write(tmp_path, "user,item,timestamp", []))


def test_how_read_says_columns_unit_repeats_and_extras(tmp_path):
    rows = [("a", "x", 1_600_000_000_000, "web"), ("a", "x", 1_600_000_001_000, "app"),
            ("a", "y", 1_600_000_002_000, "app"), ("b", "y", 1_600_000_003_000, "web")]
    ds = data.load(_write(tmp_path, "userId,itemId,ts,channel", rows), min_user=1, min_item=1)
    assert ds.how_read().splitlines() == [
        "columns (user, item, time): userId, itemId, ts",
        "time: milliseconds since the epoch (largest value 1.6e+12), converted to seconds",
        "repeat interactions: 25.00% of the interactions repeat an item the user had before; "
        "the first of each is kept",
        "extra columns kept: none",
        "extra columns ignored: channel",
        "filter: users with < 1 and items with < 1 interactions dropped, repeatedly, until none is left"]


def test_load_parses_a_fetched_dataset_under_the_data_lock_and_writes_whole_files(tmp_path, monkeypatch):
    """Notebooks of a batch load MovieLens at the same moment: the parse and the cache writes
    happen while ``root/.fetch.lock`` is held (a second flock on it would block), and the cache
    appears whole (no temporary file left); the next load reads that cache."""
    import fcntl
    import importlib
    import shutil

    fetch_mod = importlib.import_module("seqtransfer.data.fetch")
    loaders = importlib.import_module("seqtransfer.data.loaders")

    src = fetch_mod.default_data_dir() / "ml-100k"
    if not fetch_mod._verify_cached(src):
        pytest.skip("ml-100k is not fetched here (`seqtransfer fetch ml-100k`)")
    shutil.copytree(src, tmp_path / "ml-100k", ignore=shutil.ignore_patterns("interactions.parquet", "items.pkl"))
    seen = []
    real = loaders._read_recbole_movielens

    def parse_and_probe(folder, name):
        with open(tmp_path / ".fetch.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("free")
                fcntl.flock(fh, fcntl.LOCK_UN)
            except BlockingIOError:
                seen.append("held")
        return real(folder, name)

    monkeypatch.setattr(loaders, "_read_recbole_movielens", parse_and_probe)
    first = data.load("ml-100k", data_dir=tmp_path)
    assert seen == ["held"]
    assert (tmp_path / "ml-100k" / "interactions.parquet").exists() and (tmp_path / "ml-100k" / "items.pkl").exists()
    assert not list((tmp_path / "ml-100k").glob("*.tmp"))
    again = data.load("ml-100k", data_dir=tmp_path)              # from the cache: no second parse
    assert seen == ["held"]
    pd.testing.assert_frame_equal(first.inter, again.inter)
