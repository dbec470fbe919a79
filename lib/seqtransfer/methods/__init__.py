"""One module per method: a commented config dataclass plus ``fit(...) -> MethodResult``."""
from . import ant, baseline, gradient_alignment, intervened
from .common import (MethodResult, backbone_name, combine_results, compare, compare_pairs, convergence_sentence,
                     diagnostics, null_check_sentence, run_facts, tuning_table,
                     difference_row, evaluate_both, gap_sentence, histories, still_improving, stopped_by_cap,
                     summarize, transfer_verdict, user_values, verdict_sentence)
