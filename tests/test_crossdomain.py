"""Cross-domain data: the atomic-layout loader on a tiny fixture (good and malformed), disjoint
genre domains with per-domain sequences, dataset settings and their labels, and the errors."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqtransfer import data
from seqtransfer.data import DataError
from seqtransfer.data.atomic import load_atomic

pytestmark = pytest.mark.unit

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"
# user 0: 0 1 2 | 3 | 4 ; user 1: 7 5 6 9 8 | 10 | 11 (prefixes cut to 3) ; user 2: 2 5 | 0 | 1
# (train | valid | test), training rows shuffled across and within users
TRAIN = ["1\t5 6 9\t8", "0\t0 1\t2", "1\t7\t5", "2\t2\t5", "0\t0\t1", "1\t7 5 6\t9", "1\t7 5\t6"]
VALID = ["0\t0 1 2\t3", "1\t6 9 8\t10", "2\t2 5\t0"]
TEST = ["0\t1 2 3\t4", "1\t9 8 10\t11", "2\t2 5 0\t1"]
SEQS = {"ua": [0, 1, 2, 3, 4], "ub": [7, 5, 6, 9, 8, 10, 11], "uc": [2, 5, 0, 1]}


def _atomic(folder: Path, train=TRAIN, valid=VALID, test=TEST, name="Toy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, rows in (("train", train), ("valid", valid), ("test", test)):
        (folder / f"{name}.{part}.inter").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    (folder / f"{name}.item2index").write_text("".join(f"A{i:02d}\t{i}\n" for i in range(12)))
    (folder / f"{name}.user2index").write_text("ua\t0\nub\t1\nuc\t2\n")
    (folder / f"{name}.text").write_text("item_id:token\ttext:token_seq\n" +
                                         "".join(f"A{i:02d}\tthing number {i}. \n" for i in range(12)))
    return folder


def _sequence(ds, split, raw_user):
    u = list(ds.user_ids).index(raw_user)
    seq = list(split.train_seq(u)) + [split.valid[u], split.test[u]]
    return [int(ds.item_ids[i - 1][1:]) for i in seq]


def test_atomic_loader_rebuilds_sequences_out_of_order(tmp_path):
    ds = load_atomic(_atomic(tmp_path / "toy"), max_prefix=3)
    sp = data.leave_one_out(ds)
    for raw, seq in SEQS.items():
        assert _sequence(ds, sp, raw) == seq
    assert ds.n_users == 3 and ds.n_items == 12
    assert ds.items.set_index("raw_id").loc["A07", "title"] == "thing number 7."
    # through load(): a folder in the layout is recognised, its own split kept
    assert data.load(tmp_path / "toy").n_items == 12


def test_atomic_loader_malformed(tmp_path):
    bad_test = TEST[:1] + ["1\t9 8 7\t11"] + TEST[2:]
    with pytest.raises(DataError, match="user 1 .*files disagree"):
        load_atomic(_atomic(tmp_path / "a", test=bad_test), max_prefix=3)
    with pytest.raises(DataError, match="not an integer"):
        load_atomic(_atomic(tmp_path / "b", valid=VALID[:2] + ["2\t2 5\tx"]), max_prefix=3)
    with pytest.raises(DataError, match="do not chain"):
        load_atomic(_atomic(tmp_path / "c", train=TRAIN + ["0\t4 4\t4"]), max_prefix=3)
    with pytest.raises(DataError, match="not in the index file"):
        load_atomic(_atomic(tmp_path / "d", train=TRAIN + ["9\t0\t1"]), max_prefix=3)
    folder = _atomic(tmp_path / "e")
    (folder / "Toy.text").unlink()
    with pytest.raises(DataError, match="Toy.text is missing"):
        load_atomic(folder)
    with pytest.raises(DataError, match="atomic layout"):
        data.load(tmp_path)          # a folder with no dataset in any known layout
    folder = _atomic(tmp_path / "f")
    (folder / "SHA256SUMS").write_text("0" * 64 + "  Toy.text\n")
    with pytest.raises(DataError, match="Toy.text does not match its digest"):
        load_atomic(folder)


@pytest.mark.skipif(not (Path(__file__).resolve().parents[1] / "../shared/data/amazon-scientific").is_dir(),
                    reason="../shared/data/amazon-scientific is not beside the project")
def test_amazon_scientific_by_name():
    ds = data.load("amazon-scientific")
    assert (ds.n_users, ds.n_items) == (2928, 1585)
    assert data.leave_one_out(ds).activeness.min() >= 1


def _genre_toy(tmp_path):
    """Films f0..f5; genres: f0,f1 A; f2,f3 B; f4 (A,C) -> C under 'rarest'; f5 C."""
    genres = {"f0": "A", "f1": "A", "f2": "B", "f3": "B", "f4": "A|C", "f5": "C"}
    items = tmp_path / "items.csv"
    items.write_text("item,title,genres\n" + "".join(f"{k},Film {k},{g}\n" for k, g in genres.items()))
    rows = []
    for u in range(8):
        for t, f in enumerate(["f0", "f2", "f1", "f3", "f4", "f5", "f0", "f2"][: 6 + u % 3]):
            rows.append(f"u{u},{f},{100 * t + u}")
    inter = tmp_path / "inter.csv"
    inter.write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    return data.load(inter, items_path=items, min_user=1, min_item=1)


def test_genre_setting_disjoint_per_domain_sequences(tmp_path):
    ds = _genre_toy(tmp_path)
    s = data.genre_setting(ds, "C", min_users=2, min_len=2)
    assert s.kind == "genre"
    assert sorted(s.target.item_ids) == ["f4", "f5"]          # f4 goes to its rarest genre C
    assert set(s.sources.item_ids) == {"f0", "f1", "f2", "f3"}  # disjoint from the target
    # one sequence per (user, domain), in time order: u0 saw f0, f2, f1, f3 (+ f4, f5 in C)
    src = s.sources
    for key, films in (("u0|A", ["f0", "f1"]), ("u0|B", ["f2", "f3"])):
        u = list(src.user_ids).index(key)
        rows = src.inter[src.inter["user"] == u].sort_values("timestamp")
        assert list(src.item_ids[rows["item"] - 1]) == films
    assert set(src.inter["domain"]) == {"A", "B"} and src.n_users == 16
    u = list(s.target.user_ids).index("u0|C")
    assert list(s.target.item_ids[s.target.inter.query("user == @u")["item"] - 1]) == ["f4", "f5"]
    with pytest.raises(DataError, match="unknown target genre 'Z'"):
        data.genre_setting(ds, "Z", min_users=2, min_len=2)
    with pytest.raises(DataError, match="only 8 users .*lower min_users"):
        data.genre_setting(ds, "C", min_users=50, min_len=2)
    with pytest.raises(DataError, match="source genre"):
        data.genre_setting(ds, "C", sources=["Q"], min_users=2, min_len=2)


def test_dataset_setting_labels_sanity_by_title_overlap(tmp_path):
    ds = _genre_toy(tmp_path)
    same = data.load(tmp_path / "inter.csv", items_path=tmp_path / "items.csv", min_user=1, min_item=1)
    same.name = "copy"
    s = data.dataset_setting(ds, same, min_len=2)
    assert s.kind == "sanity" and s.title_overlap == 1.0
    other = same.__class__("other", same.inter, same.items.assign(title=[f"x{i}" for i in range(6)]),
                           same.user_ids)
    s2 = data.dataset_setting(ds, other, min_len=2)
    assert s2.kind == "cross-platform" and s2.title_overlap == 0.0
    small = s.sample(3, seed=0)
    assert small.target.n_users == 3
    assert small.sources.inter.groupby("domain")["user"].nunique().max() <= 3


def test_a_dataset_target_given_a_genre_targets_sources_gets_the_same_sources(tmp_path):
    """What 04 shares at quick: the cross target built with the genre target's source genres
    holds the very same source sequences and names the same held-out genre, so ANT's
    pre-training (named and keyed by its sources) is one run for both."""
    from seqtransfer.methods import ant
    ds = _genre_toy(tmp_path)
    other = data.load(tmp_path / "inter.csv", items_path=tmp_path / "items.csv", min_user=1, min_item=1)
    other.name = "other"
    genre = data.genre_setting(ds, "C", min_users=2, min_len=2)
    shared = sorted(genre.sources.inter["domain"].unique())
    cross = data.dataset_setting(ds, other, sources=shared, min_len=2)
    assert genre.meta["held_out"] == cross.meta["held_out"] == ["C"]
    pd.testing.assert_frame_equal(genre.sources.inter, cross.sources.inter)
    assert list(genre.sources.user_ids) == list(cross.sources.user_ids)
    assert ant.pretrain_name(genre) == ant.pretrain_name(cross) == "ANT pre-train on inter, 2 genres (no C)"
    whole = data.dataset_setting(ds, other, min_len=2)                   # every genre: nothing held out
    assert whole.meta["held_out"] == [] and ant.pretrain_name(whole) == "ANT pre-train on inter, 3 genres"


def test_named_atomic_dataset_missing_folder(monkeypatch):
    from seqtransfer.data import atomic
    monkeypatch.setitem(atomic.ATOMIC_DATASETS, "amazon-nowhere", ("../shared/data/nowhere", "X"))
    with pytest.raises(DataError, match="beside the project root .*does not exist"):
        data.load("amazon-nowhere")


def test_dataset_setting_without_genres_uses_the_whole_source(tmp_path):
    ds = _genre_toy(tmp_path)
    plain = data.load(tmp_path / "inter.csv", min_user=1, min_item=1)      # no item file: no genres
    plain.name = "plain"
    s = data.dataset_setting(plain, ds, min_len=2)
    assert set(s.sources.inter["domain"]) == {"plain"} and s.sources.n_users == plain.n_users
