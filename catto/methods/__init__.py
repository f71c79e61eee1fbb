"""Every evaluation method behind one interface (`catto.methods.base.Evaluator`), found by name.

Built in: `scoring` (the model's own option probabilities), `temperature`, `msp`, `coral`, `secl`,
`confidence_at_k` and `token` (held-out token calibration). A method module registers its class on import with
`@register_method`; `get_method_class(name)` imports the built-in module on first use, so listing the methods
costs nothing and a user's own registered class is found the same way.

Adding a method is one module (a config dataclass and an `Evaluator` subclass with `@register_method`) and, for a
built-in one, one line of `BUILTIN_METHODS`. What the runner and `catto report` need to know about it is asked of
the class (hooks): `needs_labels`, `accepts_pairs`, `uses_fewshot`, `resumable`, `report_columns`,
`format_summary` (its own table) and `report_config` (which of the report's shared options it takes).

Example:
    >>> from catto.methods import get_method_class, method_names
    >>> method_names()[:3]
    ['scoring', 'temperature', 'msp']
    >>> get_method_class("temperature").needs_labels
    True
"""

from __future__ import annotations

from .base import (
    BUILTIN_METHODS,
    METHODS,
    REPORT_COLUMNS,
    Evaluator,
    EvaluatorConfig,
    ScoringFields,
    get_method_class,
    load_evaluator,
    method_names,
    register_method,
)

__all__ = ["BUILTIN_METHODS", "METHODS", "REPORT_COLUMNS", "Evaluator", "EvaluatorConfig", "ScoringFields",
           "get_method_class", "load_evaluator", "method_names", "register_method"]
