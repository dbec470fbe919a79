"""UniSRec's atomic layout (Amazon review data, e.g. "Industrial and Scientific").

A folder holds, for one dataset ``NAME``, tab-separated files with ``name:type`` headers:

* ``NAME.train.inter``: ``user_id  item_id_list  item_id``, one row per training prefix (its
  last ``max_prefix`` = 50 items at most) and the item that followed it;
* ``NAME.valid.inter`` / ``NAME.test.inter``: one row per user, the history before the
  second-to-last (valid) and the last (test) item;
* ``NAME.text``: ``item_id  text`` keyed by the raw item id (ASIN);
* ``NAME.item2index`` / ``NAME.user2index``: raw id -> the integer index used in the inter files.

There are no timestamps: order is time. The rows of one user in ``train.inter`` are not
necessarily in time order, so each user's sequence is rebuilt by chaining prefixes: start from
the shortest prefix, append the target of the row whose prefix equals the last 50 items so far,
until every row is used. The rebuilt sequence must reproduce the file's own validation and test
rows; any mismatch is an error naming the user. The result is an :class:`Interactions` whose
``timestamp`` is the position in the sequence, so :func:`leave_one_out` gives back exactly the
files' validation and test items.

A ``SHA256SUMS`` file in the folder, when present, is checked first. The dataset name
``"amazon-scientific"`` resolves to ``../shared/data/amazon-scientific`` next to
the project root (the files are read in place, never copied into the project).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .fetch import sha256
from .loaders import DataError, Interactions, _tidy

SUFFIXES = ("train.inter", "valid.inter", "test.inter", "text", "item2index", "user2index")
# dataset name -> (folder relative to the project root, NAME inside it)
ATOMIC_DATASETS = {"amazon-scientific": ("../shared/data/amazon-scientific", "Scientific")}


def project_root() -> Path | None:
    """The source checkout holding this library (``lib/seqtransfer`` and ``pyproject.toml``)."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").exists() and (root / "lib" / "seqtransfer").exists() else None


def resolve_atomic(name: str) -> Path:
    """The folder of a named atomic dataset, relative to the project root."""
    rel, _ = ATOMIC_DATASETS[name]
    root = project_root()
    folder = (root / rel).resolve() if root is not None else None
    if folder is None or not folder.is_dir():
        raise DataError(
            f"dataset {name!r} is read from {rel} beside the project root"
            f"{f' ({folder})' if folder else ''}, which does not exist. Put the folder there, or "
            "pass the path of any folder in the UniSRec atomic layout (NAME.train.inter, "
            "NAME.valid.inter, NAME.test.inter, NAME.text, NAME.item2index, NAME.user2index).")
    return folder


def is_atomic_folder(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("*.train.inter"))


def _read(path: Path, columns: tuple[str, ...], header: bool = True) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path.parent} is not in the UniSRec atomic layout: {path.name} is "
                        f"missing. It needs NAME.{{{','.join(SUFFIXES)}}}.")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3, encoding="utf-8",
                     header=0 if header else None)
    if header:
        df.columns = [str(c).split(":")[0].strip() for c in df.columns]
    else:
        df.columns = list(columns)[:df.shape[1]] + list(df.columns[len(columns):])
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path.name}: columns {missing} are missing (it has {list(df.columns)}); "
                        f"expected the tab-separated columns {list(columns)}.")
    return df


def _ints(col: pd.Series, path: Path, what: str) -> np.ndarray:
    num = pd.to_numeric(col, errors="coerce")
    if num.isna().any():
        row = int(np.flatnonzero(num.isna().to_numpy())[0])
        raise DataError(f"{path.name}: {what} in data row {row + 1} is {col.iloc[row]!r}, not an "
                        "integer index; the inter files hold the indices of NAME.item2index / "
                        "NAME.user2index.")
    return num.to_numpy(np.int64)


def _lists(col: pd.Series, path: Path) -> list[tuple[int, ...]]:
    out = []
    for row, s in enumerate(col):
        try:
            out.append(tuple(int(x) for x in s.split()))
        except ValueError:
            raise DataError(f"{path.name}: item_id_list in data row {row + 1} is {s!r}; expected "
                            "space-separated integer item indices.") from None
    return out


def check_sums(folder: Path) -> None:
    """When the folder has a ``SHA256SUMS`` file, every file it lists must match its digest."""
    sums = folder / "SHA256SUMS"
    if not sums.exists():
        return
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, fname = line.split(maxsplit=1)
        path = folder / fname.strip()
        if path.exists() and sha256(path) != digest:
            raise DataError(f"{path} does not match its digest in {sums}: the file changed or is "
                            "corrupt; restore it (or delete its line from SHA256SUMS if you changed it on purpose).")


def rebuild_sequence(prefixes: list[tuple[int, ...]], targets: list[int], max_prefix: int,
                     where: str) -> list[int]:
    """One user's training sequence from its (prefix, next item) rows, in any row order."""
    if not prefixes:
        return []
    by_prefix = {}
    for p, t in zip(prefixes, targets):
        by_prefix.setdefault(p, []).append(t)
    seq = list(min(prefixes, key=len))
    used = 0
    while True:
        key = tuple(seq[-max_prefix:])
        nxt = by_prefix.get(key)
        if not nxt:
            break
        seq.append(nxt.pop(0))
        used += 1
    if used != len(prefixes):
        raise DataError(f"{where}: its {len(prefixes)} training rows do not chain into one sequence "
                        f"(only {used} follow each other); the train.inter file is corrupt or mixes "
                        "several users' rows.")
    return seq


def load_atomic(folder: str | Path, name: str | None = None, max_prefix: int | None = None) -> Interactions:
    """Load a dataset in the atomic layout as an :class:`Interactions` (item text in ``title``),
    keeping every user and item (no k-core filter, no de-duplication: the files' own split)."""
    inter, items = read_atomic(folder, name, max_prefix)
    ds = _tidy(Path(folder).name, inter, items, min_user=1, min_item=1, dedupe=False)
    ds.meta.update(layout="atomic", folder=str(folder))
    return ds


def read_atomic(folder: str | Path, name: str | None = None,
                max_prefix: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Raw interactions (user, item, timestamp = position) and items (raw_id, title = text) of
    a folder in the atomic layout, each user's sequence rebuilt and checked.

    Args:
        folder: the folder holding ``NAME.*`` files.
        name: ``NAME``; inferred when the folder holds exactly one ``*.train.inter``.
        max_prefix: the longest prefix the files keep (50 in UniSRec's data); None: the longest
            prefix found in the files (a history never cut is never longer than that).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such folder: {folder}; pass a folder in the UniSRec atomic layout.")
    if name is None:
        names = sorted(p.name[:-len(".train.inter")] for p in folder.glob("*.train.inter"))
        if len(names) != 1:
            raise DataError(f"{folder} is not in the UniSRec atomic layout: expected one "
                            f"NAME.train.inter, found {names or 'none'}; pass name=... or point "
                            "at a folder with NAME.{train,valid,test}.inter, NAME.text, "
                            "NAME.item2index, NAME.user2index.")
        name = names[0]
    f = {s: folder / f"{name}.{s}" for s in SUFFIXES}
    check_sums(folder)
    item_idx = _read(f["item2index"], ("raw", "index"), header=False)
    user_idx = _read(f["user2index"], ("raw", "index"), header=False)
    item_raw = pd.Series(item_idx["raw"].to_numpy(), index=_ints(item_idx["index"], f["item2index"], "index"))
    user_raw = pd.Series(user_idx["raw"].to_numpy(), index=_ints(user_idx["index"], f["user2index"], "index"))
    text = _read(f["text"], ("item_id", "text"))

    split_rows = {}
    for part in ("train", "valid", "test"):
        path = f[f"{part}.inter"]
        df = _read(path, ("user_id", "item_id_list", "item_id"))
        users, items = _ints(df["user_id"], path, "user_id"), _ints(df["item_id"], path, "item_id")
        prefixes = _lists(df["item_id_list"], path)
        for what, ids, known in (("user_id", users, user_raw.index), ("item_id", items, item_raw.index)):
            bad = ~np.isin(ids, known)
            if bad.any():
                raise DataError(f"{path.name}: {what} {int(ids[bad][0])} (and {int(bad.sum()) - 1} more) "
                                f"is not in the index file; the files do not belong together.")
        split_rows[part] = (users, prefixes, items)

    if max_prefix is None:
        max_prefix = max(len(p) for part in split_rows.values() for p in part[1])
    train_users, train_prefixes, train_items = split_rows["train"]
    per_user: dict[int, tuple[list, list]] = {}
    for u, p, t in zip(train_users, train_prefixes, train_items):
        per_user.setdefault(int(u), ([], []))
        per_user[int(u)][0].append(p)
        per_user[int(u)][1].append(int(t))
    last = {part: {int(u): (p, int(t)) for u, p, t in zip(*split_rows[part])} for part in ("valid", "test")}
    if set(last["valid"]) != set(last["test"]):
        raise DataError(f"{name}.valid.inter and {name}.test.inter name different users; each user "
                        "needs one row in both.")

    rows = []
    for u in sorted(last["valid"]):
        where = f"{name}: user {u} ({user_raw[u]})"
        prefixes, targets = per_user.get(u, ([], []))
        seq = rebuild_sequence(prefixes, targets, max_prefix, where)
        vp, vt = last["valid"][u]
        if not seq:              # no training row: the validation prefix is the whole history
            seq = list(vp)
        tp, tt = last["test"][u]
        if tuple(seq[-max_prefix:]) != vp:
            raise DataError(f"{where}: the sequence rebuilt from train.inter ends in "
                            f"{seq[-max_prefix:][-5:]} but valid.inter's history ends in {list(vp)[-5:]}; "
                            "the files disagree.")
        if tuple((seq + [vt])[-max_prefix:]) != tp:
            raise DataError(f"{where}: test.inter's history is not the training sequence plus the "
                            "validation item; the files disagree.")
        full = seq + [vt, tt]
        rows.append(pd.DataFrame({"user": user_raw[u], "item": item_raw.loc[full].to_numpy(),
                                  "timestamp": np.arange(len(full), dtype=np.int64)}))
    inter = pd.concat(rows, ignore_index=True)
    items = pd.DataFrame({"raw_id": text["item_id"], "title": text["text"].str.strip(),
                          "year": np.nan, "genres": [()] * len(text)})
    no_text = set(inter["item"]) - set(items["raw_id"])
    if no_text:
        raise DataError(f"{name}.text has no line for {len(no_text)} items (e.g. {sorted(no_text)[:3]}); "
                        "every item needs its text.")
    return inter, items
