"""Validation shared by strategy ``Options`` dataclasses."""

from __future__ import annotations


def require_positive(owner: str, **values: int) -> None:
    """Raise a ``ValueError`` naming every option of ``owner`` that is below 1."""
    bad = [f"{name}={value}" for name, value in values.items() if value < 1]
    if bad:
        raise ValueError(f"query.options for '{owner}': {', '.join(bad)} must be >= 1")
