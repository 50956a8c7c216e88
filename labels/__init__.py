"""kubeport labels: the label library shared by the registry, the agent and the CLI.

A leaf package: it must not import ``registry``. On import it needs the standard library and RE2
(``google-re2``, behind ``labels.regex``: label regular expressions run in linear time). The trio-based
dynamic-label runner lives in ``labels.runner`` and the croniter-based schedules in ``labels.schedule``;
import those explicitly where needed, this package does not.

* ``labels.keys``       — label key / label map validation, printable-text check (:class:`LabelError`)
* ``labels.regex``      — RE2 label regular expressions (compile with a reason, linear-time fullmatch)
* ``labels.selectors``  — Teleport-compatible selector matching, explanations, selector validation
* ``labels.combine``    — static + dynamic label combination and formatting
* ``labels.duration``   — Go duration strings for dynamic-label periods
"""

from labels.combine import combine, format_labels
from labels.duration import MIN_PERIOD, format_go_duration, parse_go_duration
from labels.keys import (
    MAX_LABEL_KEY_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    LabelError,
    is_valid_label_key,
    validate_label_key,
    validate_labels,
)
from labels.selectors import (
    Mismatch,
    Selector,
    SelectorItem,
    SelectorValue,
    could_match,
    explain,
    explain_all,
    match_labels,
    matches_any,
    validate_selector,
    validate_selector_items,
)

__all__ = [
    "MAX_LABEL_KEY_LENGTH",
    "MAX_LABEL_VALUE_LENGTH",
    "MIN_PERIOD",
    "LabelError",
    "Mismatch",
    "Selector",
    "SelectorItem",
    "SelectorValue",
    "combine",
    "could_match",
    "explain",
    "explain_all",
    "format_go_duration",
    "format_labels",
    "is_valid_label_key",
    "match_labels",
    "matches_any",
    "parse_go_duration",
    "validate_label_key",
    "validate_labels",
    "validate_selector",
    "validate_selector_items",
]
