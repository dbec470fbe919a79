"""One module per method: a commented config dataclass plus ``fit(...) -> MethodResult``."""
from . import baseline
from .common import MethodResult, combine_results, evaluate_both, summarize, transfer_verdict
