"""One module per method: a commented config dataclass plus ``fit(...) -> MethodResult``."""
from . import baseline, gradient_alignment, intervened
from .common import (MethodResult, backbone_name, combine_results, diagnostics, evaluate_both,
                     gap_sentence, histories, summarize, transfer_verdict)
