"""Active-learning query strategies, one module each, registered by name.

Importing this package registers every strategy module listed below.
"""

from strategies import entropy, random_sampling  # noqa: F401  (registration)
from strategies.base import QueryStrategy, RoundContext
from strategies.registry import available, build_strategy, register, strategy_class

__all__ = [
    "QueryStrategy",
    "RoundContext",
    "available",
    "build_strategy",
    "register",
    "strategy_class",
]
