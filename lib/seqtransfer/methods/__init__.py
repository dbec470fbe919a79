"""One module per method: a commented config dataclass plus ``fit(...) -> MethodResult``."""
from . import ant, baseline, gradient_alignment, intervened
from .common import (MethodResult, backbone_name, combine_results, convergence_sentence, diagnostics,
                     evaluate_both, gap_sentence, histories, still_improving, summarize, transfer_verdict)
