"""One module per method: a commented config dataclass plus ``fit(...) -> MethodResult``."""
from . import baseline
from .common import (MethodResult, backbone_name, combine_results, diagnostics, evaluate_both,
                     gap_sentence, histories, summarize, transfer_verdict)
