"""Every evaluation method behind one interface (`catto.methods.base.Evaluator`), found by name.

Built in: `scoring` (the model's own option probabilities), `temperature`, `msp`, `coral`, `secl`,
`confidence_at_k` and `token` (held-out token calibration). A method module registers its class on import with
`@register_method`; `get_method_class(name)` imports the built-in module on first use, so listing the methods
costs nothing and a user's own registered class is found the same way.

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
    EVALUATORS,
    METHODS,
    Evaluator,
    EvaluatorConfig,
    ScoringFields,
    get_method_class,
    load_evaluator,
    method_names,
    register_evaluator,
    register_method,
)

get_evaluator_class = get_method_class  # catto <= 0.1 name

__all__ = ["BUILTIN_METHODS", "EVALUATORS", "METHODS", "Evaluator", "EvaluatorConfig", "ScoringFields",
           "get_evaluator_class", "get_method_class", "load_evaluator", "method_names", "register_evaluator",
           "register_method"]
