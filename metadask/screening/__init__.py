"""Global feature screening: one exclusion list, computed once on a representative gene sample.

The same list applies to every CV fold, ensemble member, the final model and the inference
manifest. See ``docs/screening.md`` for the rules and how to override them.
"""

from metadask.screening.rules import (
    ANNOTATION_ARTIFACTS,
    NEAR_CONSTANT_SHARE,
    TABLE_COLUMNS,
    TARGET_NAMES,
    column_stats,
    decide,
    reason_category,
    screen_sample,
    stats_frame,
)
from metadask.screening.screen import (
    EXCLUDED_FILE,
    TABLE_FILE,
    ScreeningResult,
    load_exclusions,
    parse_exclude_option,
    screen_features,
    summary_lines,
)

__all__ = [
    "ANNOTATION_ARTIFACTS",
    "EXCLUDED_FILE",
    "NEAR_CONSTANT_SHARE",
    "TABLE_COLUMNS",
    "TABLE_FILE",
    "TARGET_NAMES",
    "ScreeningResult",
    "column_stats",
    "decide",
    "load_exclusions",
    "parse_exclude_option",
    "reason_category",
    "screen_features",
    "screen_sample",
    "stats_frame",
    "summary_lines",
]
