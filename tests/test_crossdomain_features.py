"""Item features: MiniLM against a reference embedding, the text cache (reused, invalidated),
the fixed numeric and categorical codes, and a user's own feature file (good and bad ids)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from seqtransfer import data
from seqtransfer.data import DataError
from seqtransfer.data.features import (file_features, genre_features, item_features, text_features,
                                       year_features)

pytestmark = pytest.mark.unit
REF = Path(__file__).parent / "fixtures" / "minilm_reference.json"


def test_minilm_matches_reference_embedding():
    """Token ids and the 384-d vector equal those of transformers' BertModel with the model's
    pooling (mean over tokens, L2-normalised), computed once with transformers 4.46.3."""
    from seqtransfer.data.minilm import MiniLM
    ref = json.loads(REF.read_text())["texts"]
    model = MiniLM()
    texts = list(ref)
    for t in texts:
        assert model.tok.encode(t) == ref[t]["ids"], t
    vecs = model.encode(texts, batch_size=8, progress=False)    # padded together in one batch
    for i, t in enumerate(texts):
        np.testing.assert_allclose(vecs[i], ref[t]["vec"], atol=2e-6)


class CountingEncoder:
    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen.append(list(texts))
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


def test_text_cache_reused_and_invalidated(tmp_path):
    enc = CountingEncoder()
    x = text_features(["ab", "aaa", "ab"], tmp_path, encoder=enc, model_id="count")
    assert enc.seen == [["ab", "aaa"]]                       # duplicates embedded once
    np.testing.assert_array_equal(x, [[2, 1, 1], [3, 3, 1], [2, 1, 1]])
    y = text_features(["aaa", "ab"], tmp_path, encoder=enc, model_id="count")
    assert len(enc.seen) == 1                                  # all from the cache
    np.testing.assert_array_equal(y, x[[1, 0]])
    text_features(["ab", "aab"], tmp_path, encoder=enc, model_id="count")
    assert enc.seen[-1] == ["aab"]                             # a changed text: only it is embedded
    text_features(["ab"], tmp_path, encoder=enc, model_id="other")
    assert enc.seen[-1] == ["ab"]                              # another model: its own keys


def test_year_and_genre_codes():
    y = year_features(np.array([1995.0, np.nan, 1996.0]))
    assert y.shape == (3, 16)
    assert np.all(y[1] == 0)
    period = 4.0                                               # the shortest period
    np.testing.assert_allclose(y[0, 0], np.sin(2 * np.pi * 1995 / period), atol=1e-6)
    np.testing.assert_allclose(y[0, 8], np.cos(2 * np.pi * 1995 / period), atol=1e-6)
    g = genre_features([("Comedy", "Drama"), (), ("Nope",)], ("Comedy", "Drama", "War"))
    np.testing.assert_array_equal(g, [[1, 1, 0], [0, 0, 0], [0, 0, 0]])


def _toy(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text("item,title,year,genres\nx,Alpha,1990,Comedy\ny,Beta,,Drama|War\nz,Gamma,2000,\n")
    inter = tmp_path / "inter.csv"
    inter.write_text("user,item,timestamp\n" + "".join(f"u{u},{i},{t}\n" for u in range(3)
                                                           for t, i in enumerate("xyz")))
    return data.load(inter, items_path=items, min_user=1, min_item=1)


def test_item_features_slots_and_user_file(tmp_path):
    ds = _toy(tmp_path)
    vec = pd.DataFrame({"item": ["z", "x", "y", "extra"], "a": [3.0, 1.0, 2.0, 9.0], "b": [30.0, 10.0, 20.0, 90.0]})
    vec.to_parquet(tmp_path / "img.parquet")
    f = item_features(ds, {"text": "title", "numeric": "year", "categorical": "genres",
                           "image": str(tmp_path / "img.parquet")},
                      data_dir=tmp_path, text_encoder=CountingEncoder(), text_model_id="count")
    assert f.dims() == {"text": 3, "numeric": 16, "categorical": 18, "image": 2}
    for m in f.matrices.values():
        assert m.shape[0] == 4 and np.all(m[0] == 0)          # row 0 is padding
    order = list(ds.item_ids)                                  # rows follow the item ids
    np.testing.assert_array_equal(f.matrices["image"][1:, 0], [{"x": 1, "y": 2, "z": 3}[i] for i in order])
    assert f.matrices["numeric"][1 + order.index("y")].sum() == 0
    # .npz and structured .npy keyed the same way
    np.savez(tmp_path / "v.npz", item=np.array(["y", "x", "z"]), vector=np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(file_features(tmp_path / "v.npz", np.array(["x", "y", "z"])),
                                  np.eye(3)[[1, 0, 2]])
    rec = np.zeros(3, dtype=[("item", "U4"), ("vector", "f4", (2,))])
    rec["item"], rec["vector"] = ["x", "y", "z"], [[1, 2], [3, 4], [5, 6]]
    np.save(tmp_path / "v.npy", rec)
    np.testing.assert_array_equal(file_features(tmp_path / "v.npy", np.array(["z", "x"])), [[5, 6], [1, 2]])
    # ids that do not match the items: one clear error with examples
    pd.DataFrame({"item": ["1", "2", "3"], "a": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match="no row for 3 of the 3 items .*raw item ids"):
        item_features(ds, {"image": str(tmp_path / "bad.parquet")}, data_dir=tmp_path)


def test_missing_modalities_are_listed(tmp_path):
    ds = _toy(tmp_path)
    ds.items["year"] = np.nan
    ds.items["genres"] = [()] * ds.n_items
    f = item_features(ds, data_dir=tmp_path, text_encoder=CountingEncoder(), text_model_id="count")
    assert list(f.matrices) == ["text"] and set(f.missing) == {"numeric", "categorical"}
    with pytest.raises(KeyError, match="no feature slot .*no release years"):
        f.select(["text", "numeric"])
