"""Name -> query strategy class. Strategies register themselves with :func:`register`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from strategies.base import QueryStrategy

_REGISTRY: dict[str, type[QueryStrategy]] = {}


def register(cls: type[QueryStrategy]) -> type[QueryStrategy]:
    """Class decorator adding a strategy under its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"query strategy '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Registered strategy names, sorted."""
    return sorted(_REGISTRY)


def strategy_class(name: str) -> type[QueryStrategy]:
    """The class registered as ``name``; an error lists what exists."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"query.strategy: unknown strategy '{name}'; available: {', '.join(available())}"
        ) from None


def build_strategy(name: str, options: Mapping[str, Any] | None = None) -> QueryStrategy:
    """Instantiate a registered strategy with its options."""
    return strategy_class(name)(options)
