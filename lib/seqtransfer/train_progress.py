"""Training progress people can read: one bar over optimisation steps, and one line of text
when training ends.

The bar counts steps (not epochs: at the smoke budget a whole run is one epoch, at the quick
budget an epoch takes minutes), and its text gives the epoch and the last validation NDCG@10.

In a Jupyter kernel the bar is an ipywidgets progress bar shown through a display handle; on
``close`` the handle's output is *replaced* by one line of plain text and the widget is closed.
A saved notebook therefore holds text, not a widget view whose model is gone (which JupyterLab
shows as "Error displaying widget: model not found" when the notebook is reopened). Elsewhere
(terminal, plain Python) it is tqdm's text bar on ``file``, cleared on ``close`` and followed by
the same line.

Protocol, as the training loop drives it::

    bar = TrainProgress(total_steps, enabled=cfg.progress, epochs=cfg.epochs)
    bar.step(epoch)            # after every optimisation step
    bar.evaluated(epoch, ndcg) # after every validation
    bar.close(note)            # once; note says why training stopped
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import TextIO

from tqdm import tqdm as text_tqdm


def planned_steps(batches_per_epoch: int | Iterable, epochs: int, max_steps: int | None = None,
                  start_epoch: int = 0, done_steps: int = 0) -> int:
    """Steps a run will take when neither early stopping nor a time cap ends it first.

    Args:
        batches_per_epoch: the number of optimisation steps in one epoch, or one epoch's
            batches (an iterable, e.g. the loop's batch generator with a throwaway
            ``torch.Generator``), which are counted.
        epochs: the epoch cap.
        max_steps: the step cap (``None``: none).
        start_epoch, done_steps: where a resumed run starts.

    Returns:
        ``min(max_steps, done_steps + (epochs - start_epoch) * batches_per_epoch)``; with
        ``max_steps`` the loop also ends an epoch early, so the cap is exact.
    """
    n = batches_per_epoch if isinstance(batches_per_epoch, int) else sum(1 for _ in batches_per_epoch)
    if n < 0 or epochs < 0:
        raise ValueError(f"planned_steps: batches per epoch ({n}) and epochs ({epochs}) must be >= 0")
    total = done_steps + max(0, epochs - start_epoch) * n
    return total if max_steps is None else min(total, max_steps)


def _in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel that can show ipywidgets."""
    try:
        from IPython import get_ipython
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class TrainProgress:
    """A progress bar over training steps; see the module docstring for the protocol.

    Args:
        total: planned steps (``planned_steps``); the bar's 100%.
        enabled: ``False`` shows and prints nothing (batch runs, tests).
        epochs: the epoch cap, shown as ``epoch e/E``.
        initial: steps already done (a resumed run).
        desc: what trains, the start of the bar's text and of the final line.
        widget: ``None`` picks the ipywidgets bar inside a Jupyter kernel, else text; ``False``
            forces the text bar.
        file: where the text bar and the final line go (default ``sys.stderr``).
    """

    def __init__(self, total: int, enabled: bool = True, epochs: int | None = None, initial: int = 0,
                 desc: str = "training", widget: bool | None = None, file: TextIO | None = None):
        if total < 0 or initial < 0:
            raise ValueError(f"TrainProgress: total ({total}) and initial ({initial}) must be >= 0")
        self.total, self.epochs, self.desc = int(total), epochs, desc
        self.n, self.epoch, self.ndcg = int(initial), None, None
        self.enabled, self.closed = enabled, False
        self.file = file
        self._t0 = time.perf_counter()
        self._bar = self._handle = None
        if not enabled:
            return
        use_widget = _in_kernel() if widget is None else widget
        if use_widget:
            from IPython.display import display
            from tqdm.notebook import tqdm as widget_tqdm

            self._bar = widget_tqdm(total=self.total, initial=self.n, desc=desc, unit="step",
                                    display=False, leave=False)
            self._handle = display(self._bar.container, display_id=True)
        else:
            self._bar = text_tqdm(total=self.total, initial=self.n, desc=desc, unit="step",
                                  leave=False, file=file if file is not None else sys.stderr,
                                  dynamic_ncols=True, mininterval=0.5)

    def text(self) -> str:
        """Where training is: ``"epoch 2/4, valid NDCG@10 0.0312"`` (parts known so far)."""
        parts = []
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch + 1}" + (f"/{self.epochs}" if self.epochs else ""))
        if self.ndcg is not None and math.isfinite(self.ndcg):
            parts.append(f"valid NDCG@10 {self.ndcg:.4f}")
        return ", ".join(parts)

    def step(self, epoch: int, n: int = 1) -> None:
        """``n`` more optimisation steps were taken in ``epoch`` (0-based)."""
        self.n += n
        changed = epoch != self.epoch
        self.epoch = epoch
        if self._bar is not None:
            if changed:
                self._bar.set_postfix_str(self.text(), refresh=False)
            self._bar.update(n)

    def evaluated(self, epoch: int, ndcg: float) -> None:
        """Validation after ``epoch`` gave NDCG@10 ``ndcg`` (all users)."""
        self.epoch, self.ndcg = epoch, float(ndcg)
        if self._bar is not None:
            self._bar.set_postfix_str(self.text())

    def summary(self, note: str = "") -> str:
        """The line left behind on ``close``."""
        took = time.perf_counter() - self._t0
        line = f"{self.desc}: {self.n}/{self.total} steps in {took:.1f} s"
        where = self.text()
        line += f", {where}" if where else ""
        return line + (f" ({note})" if note else "")

    def close(self, note: str = "") -> None:
        """End the bar and leave one line of text in its place (``note``: why training ended).
        Closing twice does nothing."""
        if self.closed:
            return
        self.closed = True
        if self._bar is None:
            return
        line = self.summary(note)
        if self._handle is not None:
            # replace the widget's output by text first, then free the widget model
            self._handle.update({"text/plain": line}, raw=True)
            self._bar.disp = lambda *_, **__: None
            self._bar.close()
            self._bar.container.close()
        else:
            self._bar.close()
            print(line, file=self.file if self.file is not None else sys.stderr, flush=True)
        self._bar = None
