"""Progress of a running batch: a bar over the notebooks and, for each running notebook, its
current cell, section and elapsed time.

Notebooks report through papermill's own hook: ``ENGINE`` is papermill's nbclient engine with a
callback at the start of every cell (``NotebookExecutionManager.cell_start``). Each callback puts
a small event on a queue (a ``multiprocessing`` queue: each notebook runs in a process of its
own), and a ``Progress`` thread in the batch process draws them: a tqdm bar with one entry per
running notebook on a terminal, else one log line per notebook section, so a log file gets a
few lines per notebook rather than a bar redrawn every second.

The batch's time left: every notebook has an expected duration (``batch.EXPECTED_SECONDS``,
measured on the 2-core reference machine). ``time_left`` plays the rest of the batch forward on
``jobs`` slots the way the batch runs them (each running notebook finishes its expected
time, each waiting one starts on the first free slot, in order), with every expectation scaled by
how long the finished notebooks took against theirs (``pace``), so a faster or slower machine
corrects the estimate as the batch goes. ``longest_first`` is the order that keeps both slots busy
to the end: the long notebooks start first and the short ones fill the gaps.
"""
from __future__ import annotations

import itertools

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger("seqtransfer.batch")

ENGINE = "seqtransfer"   # papermill engine name registered by ``register_engine``


def longest_first(names: list[str], expected: dict[str, float]) -> list[str]:
    """``names`` ordered by expected seconds, longest first (ties and unknowns keep their order;
    an unknown notebook counts as the longest, so it never ends the batch alone)."""
    top = max(expected.values(), default=0.0)
    return sorted(names, key=lambda n: -expected.get(n, top + 1))


def best_order(names: list[str], expected: dict[str, float], jobs: int, limit: int = 8) -> list[str]:
    """The start order of ``names`` on ``jobs`` slots that ends soonest on the ``expected``
    seconds (each notebook starts on the first slot to free up, as the batch's pool does): every
    order is played for up to ``limit`` notebooks, and an order replaces the longest-first one
    (:func:`longest_first`) only when it ends strictly sooner. Longest first can leave the slots
    unequal at the end (two long notebooks, then three mid-sized ones: 3, 3, 2, 2, 2 ends at 7 on
    two slots, where 3, 2, 2, 3, 2 ends at 6). An unknown notebook counts as the longest."""
    lpt = longest_first(list(names), expected)
    if jobs < 2 or len(lpt) > limit:
        return lpt
    top = max(expected.values(), default=0.0)
    cost = {n: expected.get(n, top + 1) for n in lpt}
    best, end = lpt, time_left({}, lpt, cost, jobs)
    for order in itertools.permutations(lpt):
        t = time_left({}, list(order), cost, jobs)
        if t < end - 1e-9:
            best, end = list(order), t
    return best


def time_left(running: dict[str, float], waiting: list[str], expected: dict[str, float],
              jobs: int, pace: float = 1.0) -> float:
    """Seconds until the batch ends: ``running`` maps each running notebook to its elapsed
    seconds, ``waiting`` lists the notebooks not started, in the order they will start. Each
    notebook takes ``pace`` times its ``expected`` seconds (a notebook without one: the mean of
    the others); a running one that is past its time counts as just finishing."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    fallback = sum(expected.values()) / len(expected) if expected else 0.0
    def cost(name):
        return pace * expected.get(name, fallback)
    slots = sorted(max(cost(n) - t, 0.0) for n, t in running.items())
    slots += [0.0] * max(jobs - len(slots), 0)
    for name in waiting:
        slots.sort()
        slots[0] += cost(name)
    return max(slots, default=0.0)


def _clock(seconds: float) -> str:
    """``1 h 05 min``, ``12 min``, ``40 s``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = (seconds + 30) // 60
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def register_engine() -> None:
    """Register ``ENGINE`` with papermill (idempotent; needed once per process)."""
    from papermill.engines import NBClientEngine, papermill_engines

    class _ReportingEngine(NBClientEngine):
        """nbclient's engine that also calls ``on_cell(nb, cell_index)`` as each cell starts."""

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, on_cell: Callable | None = None,
                                     **kwargs):
            if on_cell is not None:
                start = nb_man.cell_start

                def cell_start(cell, cell_index=None, **kw):
                    on_cell(nb_man.nb, cell_index)
                    return start(cell, cell_index, **kw)

                nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(ENGINE, _ReportingEngine)


def cell_position(nb, cell_index: int) -> tuple[int, int, str]:
    """(1-based number of the code cell at ``cell_index``, code cells in all, section): the
    section is the last ``##`` (or deeper) heading of a markdown cell above it, "setup" before
    the first one."""
    cells = nb.cells
    code = [i for i, c in enumerate(cells) if c.cell_type == "code"]
    number = sum(1 for i in code if i <= cell_index)
    section = "setup"
    for cell in cells[:cell_index]:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("##"):
                    section = line.lstrip("#").strip()
    return number, len(code), section


def cell_reporter(events, name: str) -> Callable:
    """The ``on_cell`` callback of notebook ``name``: puts ``(name, "cell", (number, total,
    section), time)`` on ``events`` as a code cell starts (papermill also starts markdown cells)."""
    def on_cell(nb, cell_index):
        if nb.cells[cell_index].cell_type == "code":
            events.put((name, "cell", cell_position(nb, cell_index), time.time()))
    return on_cell


class Progress:
    """Draws batch events until closed: ``(name, "start" | "cell" | "end", payload, time)``.

    Args:
        total: notebooks in the batch.
        events: the queue the notebooks report to.
        bar: a tqdm bar (a terminal) or log lines (``None``: a bar when ``file`` is a terminal).
        file: where the bar goes (default ``sys.stderr``).
        tick: seconds between redraws of the elapsed times.
    """

    def __init__(self, total: int, events, bar: bool | None = None, file=None, tick: float = 1.0,
                 order: list[str] | None = None, expected: dict[str, float] | None = None,
                 jobs: int = 1):
        self.total, self.events, self.tick = total, events, tick
        # the batch's time left (None: no line): the notebooks in the order they start, their
        # expected seconds and the slots they run on
        self.order, self.expected, self.jobs = list(order or []), dict(expected or {}), jobs
        self.t0: float | None = None
        self.took: dict[str, float] = {}       # finished notebook -> seconds
        self.file = file if file is not None else sys.stderr
        self.bar = bool(getattr(self.file, "isatty", lambda: False)()) if bar is None else bar
        self.running: dict[str, dict] = {}   # name -> {"t0", "number", "cells", "section"}
        self.done = 0
        self.stopping: set[str] = set()      # notebooks the batch is stopping (``interrupt``)
        self._tqdm = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "Progress":
        if self.bar:
            from tqdm import tqdm
            self._tqdm = tqdm(total=self.total, desc="notebooks", unit="nb", file=self.file,
                              dynamic_ncols=True, bar_format="{desc} {n_fmt}/{total_fmt} |{bar}| "
                                                             "{elapsed}{postfix}")
        if self.order:
            left = time_left({}, self.order, self.expected, self.jobs)
            self._line(f"[0/{self.total}] batch: {self.total} notebooks on {self.jobs} "
                       f"job{'s' if self.jobs > 1 else ''}, about {_clock(left)} expected")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        if self._tqdm is not None:
            self._tqdm.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._handle(self.events.get(timeout=self.tick))
            except queue.Empty:
                pass
            except (EOFError, BrokenPipeError, ConnectionError):   # the manager went away
                return
            self._draw()

    def _drain(self) -> None:
        while True:
            try:
                self._handle(self.events.get_nowait())
            except (queue.Empty, EOFError, BrokenPipeError, ConnectionError):
                return

    def _handle(self, event) -> None:
        name, kind, payload, when = event
        if self.t0 is None:
            self.t0 = when
        if kind == "start":
            self.running[name] = {"t0": when, "number": 0, "cells": 0, "section": "starting"}
            self._line(f"[{self.done}/{self.total}] {name}: started")
        elif kind == "cell" and name in self.running:
            state = self.running[name]
            number, cells, section = payload
            if section != state["section"] and not self.bar:
                self._line(f"[{self.done}/{self.total}] {name}: {section} (cell {number}/{cells}, "
                           f"{when - state['t0']:.0f} s)")
            state.update(number=number, cells=cells, section=section)
        elif kind == "end":
            self.running.pop(name, None)
            self.done += 1
            row = payload
            self.took[name] = row["seconds"]
            if name in self.stopping and row["status"] != "ok":   # its kernel died of the stop
                self._line(f"[{self.done}/{self.total}] {name}: interrupted after {row['seconds']:.1f} s")
            else:
                self._line(f"[{self.done}/{self.total}] {name}: {row['status']} in {row['seconds']:.1f} s"
                           + (f" ({row['error']})" if row["error"] else ""))
            if self.order and self.done < self.total and not self.stopping:   # none left to estimate
                self._line(f"[{self.done}/{self.total}] batch: {self.estimate(when)}")
            if self._tqdm is not None:
                self._tqdm.update(1)

    def interrupt(self, running: list[str]) -> None:
        """The batch is stopping ``running`` (Ctrl-C or SIGTERM): say so, and report each one's
        end as interrupted, not as the dead kernel its notebook process sees."""
        self.stopping.update(running)
        self._line(f"[{self.done}/{self.total}] batch: interrupted (Ctrl-C or SIGTERM)"
                   + (f"; stopping {', '.join(running)}" if running else ""))

    def pace(self) -> float:
        """Finished notebooks' seconds over their expected seconds (1.0 before any finished,
        or without expectations)."""
        known = [n for n in self.took if self.expected.get(n)]
        if not known:
            return 1.0
        return sum(self.took[n] for n in known) / sum(self.expected[n] for n in known)

    def estimate(self, now: float | None = None) -> str:
        """``elapsed 12 min, about 33 min left`` for the whole batch."""
        now = time.time() if now is None else now
        elapsed = now - self.t0 if self.t0 is not None else 0.0
        started = set(self.running) | set(self.took)
        waiting = [n for n in self.order if n not in started]
        left = time_left({n: now - s["t0"] for n, s in self.running.items()}, waiting,
                         self.expected, self.jobs, self.pace())
        return f"elapsed {_clock(elapsed)}, about {_clock(left)} left"

    def describe(self, now: float | None = None) -> str:
        """One entry per running notebook: ``name cell 7/18 · section · 35 s``."""
        now = time.time() if now is None else now
        return " | ".join(
            f"{name} " + (f"cell {s['number']}/{s['cells']} · {s['section']} · " if s["cells"] else "")
            + f"{now - s['t0']:.0f} s" for name, s in self.running.items())

    def _draw(self) -> None:
        if self._tqdm is not None:
            text = self.describe()
            if self.order:
                text = f"{self.estimate()} | {text}"
            self._tqdm.set_postfix_str(text, refresh=True)

    def _line(self, text: str) -> None:
        if self._tqdm is not None:
            self._tqdm.write(text, file=self.file)
        else:
            log.info(text)
