"""Validation errors in a person's words. Pure: no I/O here.

pydantic reports ``{"type": "model_type", "msg": "Input should be a valid dictionary or instance
of PortRangeSpec"}``; a person editing YAML needs the value they wrote, what shape the field
takes and, for a misspelt key, the spelling it probably meant. This module turns one pydantic
error into that sentence, reading the models themselves for what a field accepts (their wire
names, their sub-fields), so a field added to the model is explained without a change here.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

# What the loc of a pydantic error may carry that is no field: union branches, validators.
_BRANCH_MARKERS = {"function-after", "function-before", "str", "int", "list", "dict", "bool"}


def shown(value: object, limit: int = 60) -> str:
    """A value as it would be written in YAML/JSON, shortened: ``"30000-32767"``, ``4.8``."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def wire_name(name: str, info: FieldInfo) -> str:
    return info.alias or name


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds (``X | None``, ``list[X]``, ``Annotated[X, ...]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out.extend(_models_in(arg))
    return out


def _enum_in(annotation: Any) -> type[enum.Enum] | None:
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return annotation
    for arg in typing.get_args(annotation):
        found = _enum_in(arg)
        if found:
            return found
    return None


def field_parts(loc: tuple[int | str, ...]) -> list[int | str]:
    """The parts of a pydantic ``loc`` that are fields or list indices."""
    return [p for p in loc if isinstance(p, int) or (p not in _BRANCH_MARKERS and "[" not in p)]


def model_at(root: type[BaseModel], parts: list[int | str]) -> type[BaseModel] | None:
    """The model that holds the fields at ``parts`` (wire names, list indices skipped)."""
    model: type[BaseModel] | None = root
    for part in parts:
        if isinstance(part, int) or model is None:
            continue
        info = _field(model, part)
        if info is None:
            return None
        found = _models_in(info.annotation)
        model = found[0] if found else None
    return model


def _field(model: type[BaseModel], wire: str) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if wire_name(name, info) == wire:
            return info
    return None


def field_names(model: type[BaseModel]) -> list[str]:
    return [wire_name(name, info) for name, info in model.model_fields.items()]


def _squashed(name: str) -> str:
    return re.sub(r"[-_\s]", "", name).lower()


def suggestion(unknown: str, known: list[str]) -> str | None:
    """The known field an unknown key probably meant: the same name in another spelling
    (``server_version``, ``ServerVersion``, ``server-version``), else a close one."""
    for name in known:
        if _squashed(name) == _squashed(unknown):
            return name
    close = difflib.get_close_matches(_squashed(unknown), [_squashed(n) for n in known], 1, 0.75)
    if close:
        return next(n for n in known if _squashed(n) == close[0])
    return None


def unknown_field(unknown: str, known: list[str]) -> str:
    """``unknown field "server_version": did you mean serverVersion?``, as the API server's
    strict field validation says it, plus the spelling it probably meant."""
    guess = suggestion(unknown, known)
    if guess:
        return f"unknown field {shown(unknown)}: did you mean {guess}?"
    listed = f" (the fields here: {', '.join(known)})" if known else ""
    return f"unknown field {shown(unknown)}{listed}"


def _shape(model: type[BaseModel]) -> str:
    names = field_names(model)
    required = [wire_name(n, i) for n, i in model.model_fields.items() if i.is_required()] or names
    listed = ", ".join(required[:4]) + (", ..." if len(required) > 4 else "")
    return f"an object with {listed}"


def _example_object(value: object, model: type[BaseModel]) -> str:
    """``"30000-32767"`` for a {from, to} object: the same range written as an object."""
    names = field_names(model)
    if isinstance(value, str) and names[:2] == ["from", "to"]:
        match = re.fullmatch(r"\s*(\d+)\s*[-:]\s*(\d+)\s*", value)
        if match:
            return f" (write {{from: {match[1]}, to: {match[2]}}})"
    return ""


def _field_info(root: type[BaseModel], parts: list[int | str]) -> FieldInfo | None:
    """The field an error's path ends at (list indices after it skipped)."""
    names = [p for p in parts if isinstance(p, str)]
    if not names:
        return None
    parent = model_at(root, _until_last_name(parts))
    return _field(parent, names[-1]) if parent else None


def _until_last_name(parts: list[int | str]) -> list[int | str]:
    last = max(i for i, p in enumerate(parts) if isinstance(p, str))
    return parts[:last]


@dataclass(frozen=True)
class _Error:
    """One pydantic error with what is known about its field."""

    value: object
    ctx: Mapping[str, Any]
    annotation: Any
    forms: Mapping[str, str]


def _object_expected(e: _Error) -> str:
    models = _models_in(e.annotation) if e.annotation is not None else []
    if models:
        shape = _shape(models[0]) + _example_object(e.value, models[0])
        return f"{shown(e.value)} is {what(e.value)}; expected {shape}"
    return f"{shown(e.value)} is {what(e.value)}; expected an object (key: value pairs)"


def _list_expected(e: _Error) -> str:
    hint = f' (write ["{e.value}"] or one "- " item per line)' if isinstance(e.value, str) else ""
    return f"{shown(e.value)} is {what(e.value)}; expected a list{hint}"


def _string_expected(e: _Error) -> str:
    quote = ""
    if isinstance(e.value, float):
        quote = (
            ': quote it as you wrote it, e.g. "4.8" (unquoted, YAML reads a number: 4.10 is 4.1)'
        )
    elif isinstance(e.value, int) and not isinstance(e.value, bool):
        quote = f': quote it ("{e.value}"); unquoted, YAML reads it as a number'
    return f"{shown(e.value)} is {what(e.value)}; expected a string{quote}"


def _choice(e: _Error) -> str:
    choices = _enum_values(e.annotation) or [str(e.ctx.get("expected", ""))]
    guess = suggestion(str(e.value), choices) if isinstance(e.value, str) else None
    hint = f": did you mean {guess}?" if guess else ""
    return f"{shown(e.value)} is not one of {', '.join(choices)}{hint}"


def _too_short(e: _Error) -> str:
    if isinstance(e.value, str):
        return f"{shown(e.value)} must not be empty"
    return f"{shown(e.value)} needs at least {e.ctx.get('min_length', 1)} item(s)"


def _too_long(e: _Error) -> str:
    if isinstance(e.value, str):
        return f"{shown(e.value)} is longer than {e.ctx.get('max_length')} characters"
    return f"has more than {e.ctx.get('max_length')} items"


def _pattern(e: _Error) -> str:
    pattern = str(e.ctx.get("pattern", ""))
    form = e.forms.get(pattern)
    if form:
        return f"{shown(e.value)} is not {form}"
    return f"{shown(e.value)} does not match the pattern {pattern}"


def _whole_number(e: _Error) -> str:
    return f"{shown(e.value)} is {what(e.value)}; expected a whole number"


def _true_or_false(e: _Error) -> str:
    return f"{shown(e.value)} is {what(e.value)}; expected true or false"


def _date_time(e: _Error) -> str:
    return f'{shown(e.value)} is not a date-time: write it as RFC 3339, e.g. "2027-03-31T00:00:00Z"'


_REASONS: dict[str, Callable[[_Error], str]] = {
    "missing": lambda e: "required field is missing",
    "model_type": _object_expected,
    "model_attributes_type": _object_expected,
    "dict_type": _object_expected,
    "list_type": _list_expected,
    "string_type": _string_expected,
    "int_type": _whole_number,
    "int_parsing": _whole_number,
    "int_from_float": lambda e: f"{shown(e.value)} is not a whole number",
    "bool_type": _true_or_false,
    "bool_parsing": _true_or_false,
    "datetime_type": _date_time,
    "datetime_parsing": _date_time,
    "datetime_from_date_parsing": _date_time,
    "enum": _choice,
    "literal_error": _choice,
    "string_too_short": _too_short,
    "too_short": _too_short,
    "string_too_long": _too_long,
    "too_long": _too_long,
    "greater_than_equal": lambda e: f"{shown(e.value)} is below the minimum {e.ctx.get('ge')}",
    "greater_than": lambda e: f"{shown(e.value)} must be greater than {e.ctx.get('gt')}",
    "less_than_equal": lambda e: f"{shown(e.value)} is above the maximum {e.ctx.get('le')}",
    "less_than": lambda e: f"{shown(e.value)} must be less than {e.ctx.get('lt')}",
    "string_pattern_mismatch": _pattern,
}


def reason(
    err: Mapping[str, Any], root: type[BaseModel], forms: Mapping[str, str] | None = None
) -> str:
    """One pydantic error as ``<value> <reason>`` in a person's words; ``forms`` says in words
    what a pattern accepts (``{SG_PATTERN: "a security group ID such as sg-0123abcd"}``)."""
    kind = str(err["type"])
    parts = field_parts(tuple(err["loc"]))
    if kind == "extra_forbidden":
        holder = model_at(root, parts[:-1]) if parts else root
        known = field_names(holder) if holder else []
        return unknown_field(str(parts[-1]) if parts else "?", known)
    explain = _REASONS.get(kind)
    if explain is None:  # a validator's own message (ValueError) is already in words
        return str(err.get("msg", "invalid")).removeprefix("Value error, ")
    info = _field_info(root, parts)
    annotation = info.annotation if info else None
    return explain(_Error(err.get("input"), err.get("ctx") or {}, annotation, forms or {}))


def _enum_values(annotation: Any) -> list[str]:
    found = _enum_in(annotation) if annotation is not None else None
    return [str(m.value) for m in found] if found else []


_WHAT: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (type(None), "empty (null)"),
    (bool, "a boolean"),
    ((int, float), "a number"),
    (str, "a string"),
    (list, "a list"),
    (Mapping, "an object"),
)


def what(value: object) -> str:
    """What a YAML value is, in words: ``a string``, ``a number``, ``an object``."""
    return next((word for kind, word in _WHAT if isinstance(value, kind)), "a value")
