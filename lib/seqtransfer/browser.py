"""Every figure checked in a real browser: the HTML reports opened in headless Chromium
(playwright's Python API driving Debian's ``/usr/bin/chromium``; no browser download), a PNG
of each figure, and a gallery of them for the batch index.

What a page must satisfy (``check_page``):

* no uncaught script error and no console error while it loads;
* every Plotly figure on it drew: a title, at least one trace with visible marks, in every
  panel that has visible traces a mark of one of them (a heatmap plotly.js cannot lay out is
  an image 0 px wide), no heatmap whose numeric x is out of order, tick labels
  on every axis that shows them, and each autoranged axis within an order of magnitude of the
  data it shows: ``span(range) <= 10 * span(data)``, both in the axis's own coordinates (log10
  on a log axis, category index on a category axis), and the range overlaps the data. This is
  what catches a label placed at 10^120 on a log axis, which leaves the data in a sliver. An
  axis whose range the figure fixes (a cosine on [-1, 1]) is a deliberate scale: it must hold
  all of its data.

``capture_batch`` runs the check on a batch folder's reports, saves
``<out>/figures/<notebook>_<n>.png`` and ``<out>/figures/checks.json``; ``gallery_html``
turns those into a fragment for ``index.html``. Without playwright or chromium,
``browser_missing`` says why and ``capture_batch`` does nothing.
"""
from __future__ import annotations

import html
import json
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
# No sandbox (containers run as root), no GPU, nothing fetched or synced in the background.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")
FIGURES_DIR = "figures"      # under a batch folder: PNGs and checks.json
MAX_SPAN_RATIO = 10.0        # an axis may show at most 10x the span of its data
RENDER_TIMEOUT_MS = 20_000   # a page's figures must have drawn by then


def browser_missing(executable: str = CHROMIUM) -> str | None:
    """Why the browser check cannot run here (``None`` when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[dev]')"
    if not (Path(executable).exists() or shutil.which(executable)):
        return f"{executable} not found (Debian package `chromium`)"
    return None


@contextmanager
def chromium(executable: str = CHROMIUM) -> Iterator[object]:
    """A headless Chromium (playwright ``Browser``), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS))
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class FigureCheck:
    """One Plotly figure as the browser drew it."""

    index: int                        # 1-based position on its page
    title: str                        # the drawn title ("" when none)
    traces: int                       # traces in the figure's data
    drawn: int                        # trace groups with visible marks
    axes: list[dict] = field(default_factory=list)  # id, type, range, data (both linearised), ticks
    problems: list[str] = field(default_factory=list)
    png: str = ""                     # file name of its PNG, when saved


@dataclass
class PageCheck:
    """One page: script and console errors, and its figures."""

    page: str
    errors: list[str] = field(default_factory=list)
    figures: list[FigureCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Every failure on the page, each naming where it is."""
        out = [f"{self.page}: {e}" for e in self.errors]
        for f in self.figures:
            out += [f"{self.page} figure {f.index} ({f.title or 'untitled'}): {p}" for p in f.problems]
        return out


# Runs in the page, given one graph div: what plotly.js drew, in its own coordinates.
# Axis ranges and data go through plotly's r2l / c2l, so a log axis compares log10 values and a
# category axis category indices. Data come from calcdata (what plotly computed for drawing).
_INSPECT_JS = r"""
(gd) => {
  const out = {title: '', traces: (gd.data || []).length, drawn: 0, axes: [], unordered: [],
               blank: [], drawnOk: !!gd._fullLayout};
  const t = gd.querySelector('.g-gtitle .gtitle');
  out.title = t ? t.textContent.trim() : '';
  if (!gd._fullLayout) return out;
  const marks = (g) => [...g.querySelectorAll('path, image, rect')].some(e => {
    // a heatmap plotly.js cannot lay out is an image 0 px wide of the empty URL "data:,"
    if (e.tagName === 'image') return +e.getAttribute('width') > 0 && +e.getAttribute('height') > 0
      && (e.getAttribute('href') || e.getAttribute('xlink:href') || 'data:,') !== 'data:,';
    if (e.tagName === 'rect') return +e.getAttribute('width') > 0 && +e.getAttribute('height') > 0;
    const d = e.getAttribute('d') || '';
    return d.length > 2 && d !== 'M0,0Z';
  });
  out.drawn = [...gd.querySelectorAll('.cartesianlayer g.trace, .cartesianlayer g.hm')]
    .filter(marks).length;
  const fl = gd._fullLayout, fd = gd._fullData || [], cd = gd.calcdata || [];
  // per panel (cartesian subplot): its visible traces, and whether any drew a mark in the
  // panel's own plot layer (an overlaid axis's layer sits inside its main panel's)
  for (const [id, plot] of Object.entries(fl._plots || {})) {
    const own = fd.filter(tr => tr.visible === true && tr.xaxis + tr.yaxis === id).length;
    const layer = plot.plot && plot.plot.node && plot.plot.node();
    if (own && layer && ![...layer.querySelectorAll('g.trace, g.hm')].some(marks))
      out.blank.push({id: id, traces: own});
  }
  const ext = {};
  const add = (id, v) => { if (v === undefined || v === null) return;
    const ax = fl[id.charAt(0) + 'axis' + id.slice(1)]; if (!ax) return;
    const l = ax.c2l(v); if (!Number.isFinite(l)) return;
    const e = ext[id] || (ext[id] = [Infinity, -Infinity]);
    e[0] = Math.min(e[0], l); e[1] = Math.max(e[1], l); };
  fd.forEach((tr, i) => {
    if (tr.visible !== true || !tr.xaxis || !tr.yaxis) return;
    const pts = cd[i] || [];
    if (tr.type === 'heatmap') {
      // plotly.js draws a heatmap whose numeric x is out of order as a blank image
      const xs = tr.x ? Array.from(tr.x) : [];
      if (xs.length > 1 && xs.every(v => typeof v === 'number')) {
        const up = xs.every((v, j) => j === 0 || v > xs[j - 1]), down = xs.every((v, j) => j === 0 || v < xs[j - 1]);
        if (!up && !down) out.unordered.push(i);
      }
      const c0 = pts[0] || {};
      (c0.x || []).forEach(v => add(tr.xaxis, v)); (c0.y || []).forEach(v => add(tr.yaxis, v));
    } else if (tr.type === 'bar') {
      const [pos, val] = tr.orientation === 'h' ? [tr.yaxis, tr.xaxis] : [tr.xaxis, tr.yaxis];
      pts.forEach(p => { if (!Number.isFinite(p.s)) return; add(pos, p.p); add(val, p.b || 0); add(val, (p.b || 0) + p.s); });
    } else {
      pts.forEach(p => { if (Number.isFinite(p.x) && Number.isFinite(p.y)) { add(tr.xaxis, p.x); add(tr.yaxis, p.y); } });
    }
  });
  for (const key of Object.keys(fl).filter(k => /^[xy]axis\d*$/.test(k))) {
    const ax = fl[key];
    if (!ax || ax.visible === false || !ext[ax._id]) continue;
    out.axes.push({id: ax._id, type: ax.type, range: ax.range.map(r => ax.r2l(r)), data: ext[ax._id],
                   labels: ax.showticklabels !== false, fixed: ax.autorange === false,
                   ticks: gd.querySelectorAll('g.' + ax._id + 'tick text').length});
  }
  return out;
}
"""


def inspect(graph) -> dict:
    """What plotly.js drew in one graph div (a playwright ``Locator``): title, traces, drawn
    trace groups and, per axis showing data, its type, range, data extent and tick labels."""
    return graph.evaluate(_INSPECT_JS)


def judge(fig: dict) -> list[str]:
    """The problems of one inspected figure (``inspect`` output), as sentences."""
    problems = []
    if not fig.get("drawnOk"):
        return ["plotly did not draw it (no layout; see the page errors)"]
    if not fig["title"]:
        problems.append("no title drawn")
    if fig["traces"] < 1 or fig["drawn"] < 1:
        problems.append(f"no trace drawn ({fig['drawn']} of {fig['traces']} traces have visible marks)")
    if not fig["axes"]:
        problems.append("no axis shows data")
    if fig.get("unordered"):
        problems.append(f"heatmap trace(s) {fig['unordered']}: numeric x out of order, which plotly.js draws blank")
    for panel in fig.get("blank", []):   # a figure whose other panels drew passes the count above
        problems.append(f"panel {panel['id']}: none of its {panel['traces']} trace(s) drew a mark")
    for ax in fig["axes"]:
        lo, hi = ax["data"]
        a, b = sorted(ax["range"])
        if ax["labels"] and ax["ticks"] == 0:
            problems.append(f"axis {ax['id']}: no tick labels drawn")
        if b < lo or a > hi:
            problems.append(f"axis {ax['id']}: range [{a:.4g}, {b:.4g}] misses the data [{lo:.4g}, {hi:.4g}]")
            continue
        if ax.get("fixed"):
            # a range the figure sets (cosine on [-1, 1], shares on [0, 1]) is a deliberate scale:
            # it must hold the data, not hug it
            tol = 1e-9 * max(abs(a), abs(b), 1.0)
            if lo < a - tol or hi > b + tol:
                problems.append(f"axis {ax['id']}: fixed range [{a:.4g}, {b:.4g}] cuts off data "
                                f"[{lo:.4g}, {hi:.4g}]")
            continue
        # the least span that counts: one category, one decade on a log axis, a tenth of the
        # values' size on a linear one; a single value (one epoch, one step) counts as its size
        size = max(abs(lo), abs(hi)) or 1.0
        floor = 1.0 if ax["type"] in ("category", "log", "multicategory") else (size if hi == lo else 0.1 * size)
        if b - a > MAX_SPAN_RATIO * max(hi - lo, floor):
            unit = " (log10)" if ax["type"] == "log" else ""
            problems.append(f"axis {ax['id']}{unit}: range [{a:.4g}, {b:.4g}] is more than {MAX_SPAN_RATIO:g}x "
                            f"the span of its data [{lo:.4g}, {hi:.4g}]")
    return problems


def check_page(browser, page_path: str | Path, png_dir: str | Path | None = None,
               png_prefix: str | None = None) -> PageCheck:
    """Open one HTML file, wait for its Plotly figures, check them (see the module docstring).

    Args:
        browser: from ``chromium()``.
        page_path: the HTML file.
        png_dir: where to save ``<png_prefix>_<n>.png`` per figure (``None``: no PNGs).
        png_prefix: file name start of the PNGs (default: the page's stem).
    """
    page_path = Path(page_path)
    result = PageCheck(page=page_path.name)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda err: result.errors.append(f"uncaught script error: {err}"))
    page.on("console", lambda msg: msg.type == "error" and result.errors.append(f"console error: {msg.text}"))
    try:
        page.goto(page_path.resolve().as_uri(), wait_until="load")
        _wait_for_figures(page)
        graphs = page.locator("div.plotly-graph-div")
        for i in range(graphs.count()):
            graph = graphs.nth(i)
            fig = inspect(graph)
            check = FigureCheck(index=i + 1, title=fig["title"], traces=fig["traces"], drawn=fig["drawn"],
                                axes=fig["axes"], problems=judge(fig))
            if png_dir is not None:
                Path(png_dir).mkdir(parents=True, exist_ok=True)
                check.png = f"{png_prefix or page_path.stem}_{i + 1}.png"
                graph.scroll_into_view_if_needed()
                graph.screenshot(path=str(Path(png_dir) / check.png))
            result.figures.append(check)
    finally:
        page.close()
    return result


def _wait_for_figures(page, timeout_ms: int = RENDER_TIMEOUT_MS) -> None:
    """Until every graph div has a layout (plotly drew it) or threw; a figure that never draws
    is reported by ``judge``, not here."""
    try:
        page.wait_for_function(
            "() => [...document.querySelectorAll('div.plotly-graph-div')].every(g => g._fullLayout)",
            timeout=timeout_ms)
    except Exception:  # playwright's TimeoutError: leave the verdict to the per-figure check
        pass
    page.wait_for_timeout(300)  # transitions and late relayouts


def capture_batch(out: str | Path, names: Sequence[str]) -> list[PageCheck]:
    """Check every ``<out>/<name>.html`` in a real browser and save its figures as PNGs.

    Writes ``<out>/figures/<name>_<n>.png`` and ``<out>/figures/checks.json`` (one entry per
    page, with its problems). Returns ``[]`` and logs one line when playwright or chromium is
    missing. Stale PNGs of these notebooks and the folder's checks.json are removed first
    (``clear_figures``), so the gallery never shows a previous run's picture; stopped half-way
    (Ctrl-C), checks.json lists the pages checked so far.
    """
    out = Path(out)
    clear_figures(out, names)
    missing = browser_missing()
    if missing:
        log.info("figure PNGs and the browser check skipped: %s", missing)
        return []
    figures = out / FIGURES_DIR
    figures.mkdir(parents=True, exist_ok=True)
    checks = []
    try:
        with chromium() as browser:
            for name in names:
                page = out / f"{name}.html"
                if page.exists():
                    checks.append(check_page(browser, page, figures, name))
    except Exception as err:  # a browser that will not start must not fail the batch
        log.warning("browser check stopped: %s: %s", type(err).__name__, err)
    finally:   # Ctrl-C half-way: the pages checked so far, and no other
        (figures / "checks.json").write_text(json.dumps([_as_json(c) for c in checks], indent=1),
                                             encoding="utf-8")
    for c in checks:
        for problem in c.problems:
            log.warning("browser check: %s", problem)
    return checks


def clear_figures(out: str | Path, names: Sequence[str]) -> None:
    """Remove ``<out>/figures/checks.json`` and the PNGs of ``names``: what an earlier batch in
    the same folder left must not pass for this one's figures (the index shows whatever
    ``checks.json`` lists) when this one's check does not run or stops half-way."""
    figures = Path(out) / FIGURES_DIR
    (figures / "checks.json").unlink(missing_ok=True)
    for name in names:
        for stale in figures.glob(f"{name}_*.png"):
            stale.unlink()


def _as_json(check: PageCheck) -> dict:
    return {**asdict(check), "problems": check.problems}


def read_checks(out: str | Path) -> list[dict]:
    """``<out>/figures/checks.json`` as written by ``capture_batch`` (``[]`` when absent)."""
    path = Path(out) / FIGURES_DIR / "checks.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def gallery_html(out: str | Path) -> str:
    """An HTML fragment for the batch index: per notebook, its figures' PNGs as thumbnails
    linking to the full picture, and the browser check's problems in red. ``""`` when no
    figures were captured (no browser on this machine)."""
    checks = read_checks(out)
    if not checks:
        return ""
    parts = ["<h2>Figures</h2>",
             "<p>Every figure of every report as headless Chromium drew it; click for full size. "
             "Each was checked for a title, drawn traces, drawn axes and axis ranges that fit "
             "its data.</p>"]
    for c in checks:
        name = html.escape(Path(c["page"]).stem)
        parts.append(f"<h3><a href='{html.escape(c['page'])}'>{name}</a></h3>")
        if c["problems"]:
            parts.append("<ul class='bad' style='color:#c62828'>" + "".join(f"<li>{html.escape(p)}</li>" for p in c["problems"])
                         + "</ul>")
        thumbs = [f"<a href='{FIGURES_DIR}/{html.escape(f['png'])}'><img src='{FIGURES_DIR}/"
                  f"{html.escape(f['png'])}' alt='{html.escape(f['title'] or name)}' "
                  f"title='{html.escape(f['title'])}' style='height:140px;margin:4px;"
                  "border:1px solid #ddd'></a>" for f in c["figures"] if f["png"]]
        parts.append("<div class='gallery'>" + "".join(thumbs) + "</div>" if thumbs
                     else "<p>No figures.</p>")
    return "\n".join(parts)
