"""Results, batch execution and HTML reports: the names notebooks, tests and the CLI import.

The work lives in modules of one job each; this module re-exports their public names, so
``from seqtransfer.report import record`` (every notebook's last cell) keeps working:

- ``seqtransfer.record``: the in-kernel record a notebook's last cell writes, and reading it back;
- ``seqtransfer.batch``: the papermill batch runner and the nbval reference copies
  (``seqtransfer.progress`` draws its progress);
- ``seqtransfer.pages``: one notebook's HTML report and the folder's shared plotly.js;
- ``seqtransfer.index``: the index page: changes against each row's baseline, leaderboard.
"""
from __future__ import annotations

from .batch import (BATCH_RENDERER, BUDGETS, DEFAULT_TIMEOUTS, DEVICES, NOTEBOOKS,
                    REFERENCE_PARAMETERS, REFERENCE_RENDERER, STATUS_COLUMNS, BatchError,
                    collect_results, collect_verdicts, make_nbval_refs, resolve_notebooks,
                    run_batch, strip_volatile_metadata)
from .index import change_table, default_baseline, leaderboard, write_index
from .pages import notebook_to_html, share_plotlyjs, strip_external_scripts, write_plotlyjs
from .record import (RECORD_KEY, REQUIRED_METRIC_COLUMNS, RESULT_COLUMNS, ROW_COLUMNS, Record,
                     Verdicts, read_payloads, read_records, record, record_summary)

__all__ = [
    "BATCH_RENDERER", "BUDGETS", "DEFAULT_TIMEOUTS", "DEVICES", "NOTEBOOKS", "REFERENCE_PARAMETERS",
    "REFERENCE_RENDERER", "STATUS_COLUMNS", "BatchError", "collect_results", "collect_verdicts",
    "make_nbval_refs", "resolve_notebooks", "run_batch", "strip_volatile_metadata",
    "change_table", "default_baseline", "leaderboard", "write_index",
    "notebook_to_html", "share_plotlyjs", "strip_external_scripts", "write_plotlyjs",
    "RECORD_KEY", "REQUIRED_METRIC_COLUMNS", "RESULT_COLUMNS", "ROW_COLUMNS", "Record", "Verdicts",
    "read_payloads", "read_records", "record", "record_summary",
]
