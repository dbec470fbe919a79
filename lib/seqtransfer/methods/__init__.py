"""One module per method: a commented config dataclass plus ``fit(...) -> MethodResult``."""
from . import baseline, gradient_alignment, intervened
from .common import (MethodResult, backbone_name, combine_results, compare, comparisons, convergence_sentence,
                     diagnostics, difference_row, evaluate_both, gap_sentence, histories, still_improving,
                     summarize, transfer_verdict, user_values, verdict_sentence)
