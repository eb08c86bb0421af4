"""The one validation mechanism of fedal: pydantic models for the experiment config's
sections (:mod:`fedal.config`) and for every query strategy's own options.

A :class:`Schema` is frozen, rejects unknown fields and coerces what TOML files, ``--set``
overrides and Flower's flat run config give (``"true"`` -> ``True``, ``3`` -> ``3.0``,
``5`` -> ``"5"`` for text). Choice fields are ``Literal`` types, ranges are ``Field``
bounds; :func:`validated` turns the first violation into a one-line :class:`ConfigError`
naming the field, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails


class ConfigError(ValueError):
    """A configuration value is invalid; the message names field, value and what is allowed."""


class Schema(BaseModel):
    """Base of every validated settings table (config sections, strategy options)."""

    model_config = ConfigDict(frozen=True, extra="forbid", coerce_numbers_to_str=True)


SchemaType = TypeVar("SchemaType", bound=Schema)

_LOWER = ((annotated_types.Gt, "gt", "<"), (annotated_types.Ge, "ge", "<="))
_UPPER = ((annotated_types.Lt, "lt", "<"), (annotated_types.Le, "le", "<="))
_KINDS: dict[Any, str] = {int: "an integer", float: "a number", bool: "true, false", str: "text"}


def _bound(field: FieldInfo, rules: tuple[tuple[type, str, str], ...]) -> tuple[str, Any] | None:
    for item in field.metadata:
        for rule, name, sign in rules:
            if isinstance(item, rule):
                return sign, getattr(item, name)
    return None


def allowed(field: FieldInfo) -> str:
    """What a field accepts, in words: its choices, its range, or its kind."""
    if get_origin(field.annotation) is Literal:
        return ", ".join(str(choice) for choice in get_args(field.annotation))
    kind = _KINDS.get(field.annotation, "a value")
    lower, upper = _bound(field, _LOWER), _bound(field, _UPPER)
    if lower and upper:
        return f"{lower[1]} {lower[0]} value {upper[0]} {upper[1]}"
    if lower:
        return f"{kind} {lower[0].replace('<', '>')} {lower[1]}"
    if upper:
        return f"{kind} {upper[0]} {upper[1]}"
    return kind


def _describe(
    model: type[Schema], error: ErrorDetails, where: str, values: Mapping[str, Any]
) -> str:
    """One line for the first validation error: field, value, what is allowed."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a rule across several fields
        return f"{where}: {message}"
    name = str(error["loc"][0])
    field = f"{where}.{name}" if where else name
    fields = model.model_fields
    if name not in fields:
        known = ", ".join(sorted(fields)) or "(none)"
        return f"{field}={values.get(name)!r}: unknown field; allowed: {known}"
    if error["type"] == "value_error":
        return f"{field}: {values.get(name)!r} is not allowed; {message}"
    return f"{field}: {values.get(name)!r} is not allowed; allowed: {allowed(fields[name])}"


def validated(model: type[SchemaType], values: Mapping[str, Any], where: str) -> SchemaType:
    """``model`` built from ``values``; the first bad field raises a one-line ConfigError.

    ``where`` prefixes field names in messages (``"data"`` -> ``data.alpha``).
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a table, got {values!r}")
    try:
        return model.model_validate(dict(values))
    except ValidationError as error:
        raise ConfigError(_describe(model, error.errors()[0], where, values)) from None
