"""The HTML pages of a batch: one report per notebook, all sharing one plotly.js.

A batch kernel shows plotly figures as JSON (for JupyterLab) and as HTML (for the report); its
``notebook`` renderer inlines plotly.js (about 5 MB) into the notebook once. ``share_plotlyjs``
replaces that copy by a reference to ``plotly.min.js`` beside the notebook, which
``write_plotlyjs`` writes once per folder, so every page of a batch (the reports and the index)
loads the same file and still opens offline from disk.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import nbformat

PLOTLYJS = "plotly.min.js"   # the shared file, beside the pages that reference it
PLOTLYJS_TAG = f'<script src="{PLOTLYJS}" charset="utf-8"></script>'


def write_plotlyjs(folder: str | Path) -> Path:
    """Write the installed plotly's ``plotly.min.js`` into ``folder`` (unless it is there)."""
    from plotly.offline import get_plotlyjs

    path = Path(folder) / PLOTLYJS
    js = get_plotlyjs()
    if not path.exists() or path.stat().st_size != len(js.encode("utf-8")):
        path.write_text(js, encoding="utf-8")
    return path


def share_plotlyjs(ipynb: str | Path) -> int:
    """Replace every inlined copy of plotly.js in an executed notebook's HTML outputs by
    ``PLOTLYJS_TAG``, in place; return how many were replaced.

    The copy is found by its exact text (the installed plotly's ``get_plotlyjs()``, the same
    that the kernel inlined), so nothing else in an output can be touched.
    """
    from plotly.offline import get_plotlyjs

    inlined = f"<script>{get_plotlyjs()}</script>"
    nb = nbformat.read(str(ipynb), as_version=4)
    n = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            page = output.get("data", {}).get("text/html")
            if isinstance(page, list):
                page = "".join(page)
            if page and inlined in page:
                output["data"]["text/html"] = page.replace(inlined, PLOTLYJS_TAG)
                n += page.count(inlined)
    if n:
        nbformat.write(nb, str(ipynb))
    return n


# <script src="https://..."></script> (or protocol-relative //...): require.js and MathJax from
# nbconvert's lab template and the MathJax tag plotly puts beside each figure.
_EXTERNAL_SCRIPT = re.compile(
    r"""<script\b[^>]*\bsrc\s*=\s*["']((?:https?:)?//[^"']*)["'][^>]*>\s*</script>""",
    re.IGNORECASE)


def strip_external_scripts(page: str) -> str:
    """Replace every ``<script src>`` that points at another host by an HTML comment.

    Reports must open offline. Nothing they show needs those scripts: plotly.js is a local file
    (``share_plotlyjs``) and does not need require.js, batch reports carry no live widgets, and
    MathJax only typesets LaTeX in markdown, which then shows as TeX source.
    """
    return _EXTERNAL_SCRIPT.sub(
        lambda m: f"<!-- seqtransfer: external script {html.escape(m.group(1))} removed "
                  "so that the report works offline -->", page)


def notebook_to_html(ipynb: str | Path, html_path: str | Path) -> Path:
    """Convert an executed notebook to an offline HTML report (nbconvert, lab template).

    Where the notebook references the shared plotly.js (``share_plotlyjs``), the file is
    written beside the report (``write_plotlyjs``). External scripts are removed (``strip_external_scripts``), and so is the notebook's widget
    state, whose renderer the template would load from a CDN. The template's mermaid loader
    stays: it fetches nothing unless the notebook holds a mermaid diagram.

    Returns:
        ``html_path``.
    """
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(ipynb), as_version=4)
    nb.metadata.pop("widgets", None)
    page, _ = HTMLExporter(template_name="lab").from_notebook_node(
        nb, resources={"metadata": {"name": Path(ipynb).stem}})
    html_path = Path(html_path)
    html_path.write_text(strip_external_scripts(page), encoding="utf-8")
    if PLOTLYJS_TAG in page:
        write_plotlyjs(html_path.parent)
    return html_path


