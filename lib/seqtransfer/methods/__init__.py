"""One module per method: a commented config dataclass plus ``fit(...) -> MethodResult``."""
from . import ant, baseline, gradient_alignment, intervened
from .common import (MethodResult, backbone_name, combine_results, compare, compare_pairs, convergence_sentence,
                     diagnostics, difference_row, evaluate_both, gap_sentence, histories, null_check_sentence,
                     run_facts, setting_summary, stage_times, still_improving, stopped_by_cap, summarize, timings,
                     transfer_verdict, tuning_note, tuning_table,
                     user_values, verdict_sentence)
