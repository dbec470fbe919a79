"""Padded sequence tensors, built once up front.

Sequences are **right-padded** with item 0: a causal model at position t sees positions 0..t
only, so real positions never see padding and no attention row is ever fully masked (the
left-padding + key-padding-mask combination that turns ``nn.TransformerEncoder``'s eval fast
path into NaN cannot arise). A sequence's representation is the output at its last real
position, ``lengths - 1``.

Training uses every position: a window ``x_0..x_m`` gives inputs ``x_0..x_{m-1}`` and targets
``x_1..x_m``, so one pass covers every prefix. A history longer than ``max_len + 1`` is cut
into consecutive windows from the most recent end (``windows="all"``, every transition used
once), or only its most recent window is kept (``windows="last"``, the original SASRec).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from .split import Split


@dataclass
class SeqData:
    """All tensors a model, the training loop and the evaluator need."""

    n_users: int
    n_items: int
    max_len: int
    train_inputs: torch.Tensor    # (N, L) long, right-padded windows
    train_targets: torch.Tensor   # (N, L) long, next item per position, 0 where padded
    train_users: torch.Tensor     # (N,) long, owner of each window
    eval_inputs: dict[str, torch.Tensor]    # split -> (U, L) most recent history
    eval_lengths: dict[str, torch.Tensor]   # split -> (U,)
    eval_targets: dict[str, torch.Tensor]   # split -> (U,)
    history_ptr: dict[str, torch.Tensor]    # split -> (U+1,) CSR offsets of items to mask
    history_items: dict[str, torch.Tensor]  # split -> (nnz,) items seen before the target
    activeness: np.ndarray                  # (U,) training interactions per user

    def to(self, device: torch.device | str) -> "SeqData":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return SeqData(self.n_users, self.n_items, self.max_len, self.train_inputs.to(device),
                       self.train_targets.to(device), self.train_users.to(device),
                       move(self.eval_inputs), move(self.eval_lengths), move(self.eval_targets),
                       move(self.history_ptr), move(self.history_items), self.activeness)

    @property
    def device(self) -> torch.device:
        return self.train_inputs.device

    def windows_of(self, users_mask: np.ndarray) -> torch.Tensor:
        """Indices of the training windows owned by users in the (U,) boolean mask."""
        m = torch.as_tensor(users_mask, dtype=torch.bool, device=self.train_users.device)
        return torch.nonzero(m[self.train_users], as_tuple=False).squeeze(1)

    def window_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, users) of the training windows ``idx``: (B, T'), (B, T'), (B,), cut to
        the batch's longest window (:func:`trim_right`)."""
        inputs, targets = trim_right(self.train_inputs[idx], self.train_targets[idx])
        return inputs, targets, self.train_users[idx]

    @property
    def n_train_positions(self) -> int:
        return int((self.train_targets > 0).sum())


def trim_right(seqs: torch.Tensor, *aligned: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``seqs`` (B, T) right-padded and every ``aligned`` (B, T, ...) tensor cut to the batch's
    longest sequence T' (at least 1). Exact for every model here: positions count from the left
    (or from each sequence's own length), attention and recurrence are causal, and losses skip
    padded targets, so the columns cut off change no real position's output. A target domain
    of short histories (Amazon Scientific: median 4 items against windows of 50) then costs a
    few positions a row instead of ``max_len``."""
    width = max(int((seqs > 0).sum(1).max()), 1) if seqs.numel() else seqs.shape[1]
    if width >= seqs.shape[1]:
        return (seqs, *aligned)
    return (seqs[:, :width], *(a[:, :width] for a in aligned))


def _pad_right(seqs: list[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


def _windows(seq: np.ndarray, max_len: int, mode: str) -> list[np.ndarray]:
    out = []
    end = len(seq)
    while end >= 2:
        start = max(0, end - max_len - 1)
        out.append(seq[start:end])
        if mode == "last" or start == 0:
            break
        end = start + 1  # consecutive windows share one item so no transition is lost
    return out


def build_sequences(split: Split, max_len: int = 200, windows: str = "all") -> SeqData:
    """Turn a :class:`Split` into padded tensors (CPU; move with ``.to(device)``)."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    if windows not in ("all", "last"):
        raise ValueError(f"windows must be 'all' or 'last', got {windows!r}")
    U = split.n_users
    win, owners = [], []
    for u in range(U):
        for w in _windows(split.train_seq(u), max_len, windows):
            win.append(w)
            owners.append(u)
    padded = _pad_right(win, max_len + 1)
    inputs = padded[:, :-1].copy()
    targets = padded[:, 1:].copy()
    targets[inputs == 0] = 0  # a target right after the last real input only

    eval_inputs, eval_lengths, eval_targets, hptr, hitems = {}, {}, {}, {}, {}
    for name, target, extra in (("valid", split.valid, None), ("test", split.test, split.valid)):
        hist = [split.train_seq(u) if extra is None else np.append(split.train_seq(u), extra[u])
                for u in range(U)]
        recent = [h[-max_len:] for h in hist]
        eval_inputs[name] = torch.from_numpy(_pad_right(recent, max_len))
        eval_lengths[name] = torch.tensor([len(h) for h in recent], dtype=torch.long)
        eval_targets[name] = torch.from_numpy(np.asarray(target, dtype=np.int64))
        lens = np.array([len(h) for h in hist])
        ptr = np.zeros(U + 1, dtype=np.int64)
        ptr[1:] = np.cumsum(lens)
        hptr[name] = torch.from_numpy(ptr)
        hitems[name] = torch.from_numpy(np.concatenate(hist).astype(np.int64))
    return SeqData(U, split.n_items, max_len, torch.from_numpy(inputs), torch.from_numpy(targets),
                   torch.tensor(owners, dtype=torch.long), eval_inputs, eval_lengths, eval_targets,
                   hptr, hitems, split.activeness)


def eval_sample(data: SeqData, n_users: int | None, seed: int = 0) -> SeqData:
    """``data`` with its validation and test parts cut to a seeded sample of ``n_users`` users
    (training windows unchanged): ranking tens of thousands of source sequences at every
    evaluation would cost more than the pre-training steps between evaluations."""
    if n_users is None or n_users >= data.n_users:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(data.n_users, n_users, replace=False))
    idx = torch.from_numpy(keep)
    ptr, items = {}, {}
    for split in ("valid", "test"):
        p = data.history_ptr[split]
        parts = [data.history_items[split][p[u]:p[u + 1]] for u in keep]
        lens = torch.tensor([len(x) for x in parts], dtype=torch.long)
        ptr[split] = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
        items[split] = torch.cat(parts)
    return replace(data, n_users=n_users,
                   eval_inputs={k: v[idx] for k, v in data.eval_inputs.items()},
                   eval_lengths={k: v[idx] for k, v in data.eval_lengths.items()},
                   eval_targets={k: v[idx] for k, v in data.eval_targets.items()},
                   history_ptr=ptr, history_items=items, activeness=data.activeness[keep])
