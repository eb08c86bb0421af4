"""Active-learning query strategies, one module each, registered by name.

Importing this package imports every module in it, so a strategy module registers
itself (``@register``) just by existing here.
"""

import importlib
import pkgutil

from strategies.base import QueryStrategy, RoundContext
from strategies.registry import available, build_strategy, register, strategy_class

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "QueryStrategy",
    "RoundContext",
    "available",
    "build_strategy",
    "register",
    "strategy_class",
]
