"""Evaluate an AWS identity-based IAM policy the way AWS documents it, for the IAM tests.

Pure: no I/O. Semantics ("Policy evaluation logic" and "IAM JSON policy elements" in the IAM
user guide), limited to one identity policy (no SCPs, boundaries, sessions or resource
policies, which the operator's deployment does not use):

- A request is one authorization: an action, one resource ARN and the request context (the
  condition keys). An API call that touches several resources (an authorise with tags touches
  the group and the new rule, and implies ``ec2:CreateTags``) is several requests, all of which
  must be allowed.
- An explicit ``Deny`` that matches wins; else an ``Allow`` that matches allows; else the
  request is denied by default.
- A statement matches when its ``Action``/``NotAction``, ``Resource``/``NotResource`` and every
  ``Condition`` match. Actions compare case-insensitively with ``*`` and ``?``; ARNs compare per
  colon-separated segment (a wildcard does not span the first five segments), case-sensitively.
- Conditions: every operator of the block, and every key under an operator, must hold (AND);
  the values listed for one key are alternatives (OR). Condition key names compare
  case-insensitively. ``...IfExists`` holds when the key is absent. Negated operators
  (``StringNotEquals``, ``StringNotLike``, ``ArnNotEquals``, ``ArnNotLike``) hold when the key is
  absent. ``ForAllValues:`` holds when every value in the request matches some policy value,
  and also when the key is absent or empty; ``ForAnyValue:`` needs at least one value that
  matches. ``Null`` with ``true`` holds when the key is absent, with ``false`` when present.

An operator this module does not know raises: a policy it cannot judge is never called allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

ContextValue = str | bool | Sequence[str]


@dataclass(frozen=True)
class Request:
    """One authorization: ``action`` (``service:Action``) on ``resource`` with ``context``."""

    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    call: str = ""
    """What made the request (the API call and its target), for messages."""

    def describe(self) -> str:
        keys = ", ".join(f"{k}={_show(v)}" for k, v in sorted(self.context.items()))
        return f"{self.action} on {self.resource}" + (f" [{keys}]" if keys else "")


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    """"allowed by <Sid>", "explicitly denied by <Sid>" or "no statement allows it"."""
    statements: tuple[str, ...] = ()


def _show(value: ContextValue) -> str:
    if isinstance(value, str | bool):
        return str(value)
    return "[" + ",".join(value) + "]"


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


@cache
def _glob(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def glob_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    return _glob(pattern, ignore_case=ignore_case).fullmatch(value) is not None


def action_matches(pattern: str, action: str) -> bool:
    return glob_match(pattern, action, ignore_case=True)


def arn_matches(pattern: str, arn: str) -> bool:
    """``*`` alone matches every resource; else the five leading segments
    (arn:partition:service:region:account) match one by one, then the resource part. A pattern
    with fewer segments matches nothing: a wildcard does not stand for several segments."""
    if pattern == "*":
        return True
    want = pattern.split(":", 5)
    have = arn.split(":", 5)
    if len(want) != 6 or len(have) != 6:
        return False
    return all(glob_match(w, h) for w, h in zip(want, have, strict=True))


# ------------------------------------------------------------------------------------------
# Conditions


def _strings(value: ContextValue) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _policy_strings(values: Any) -> list[str]:
    out = []
    for value in _as_list(values):
        out.append(("true" if value else "false") if isinstance(value, bool) else str(value))
    return out


def _one(base: str, policy_value: str, value: str) -> bool:
    """The positive form of ``base`` on one value."""
    if base == "StringEquals":
        return value == policy_value
    if base == "StringEqualsIgnoreCase":
        return value.lower() == policy_value.lower()
    if base == "StringLike":
        return glob_match(policy_value, value)
    if base in ("ArnEquals", "ArnLike"):
        return arn_matches(policy_value, value)
    if base == "Bool":
        return value.lower() == policy_value.lower()
    raise NotImplementedError(f"condition operator {base} is not evaluated by this module")


_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
}
_POSITIVE = {"StringEquals", "StringEqualsIgnoreCase", "StringLike", "ArnEquals", "ArnLike", "Bool"}


def _lookup(context: Mapping[str, ContextValue], key: str) -> list[str] | None:
    folded = key.lower()
    for name, value in context.items():
        if name.lower() == folded:
            return _strings(value)
    return None


def condition_holds(
    operator: str, key: str, policy_values: Any, context: Mapping[str, ContextValue]
) -> bool:
    """One ``operator: {key: values}`` entry of a ``Condition`` block against ``context``."""
    qualifier, _, name = operator.rpartition(":")
    if_exists = name.endswith("IfExists")
    base = name.removesuffix("IfExists")
    wanted = _policy_strings(policy_values)
    present = _lookup(context, key)

    if base == "Null":
        if qualifier:
            raise NotImplementedError(f"{operator}: Null takes no set qualifier")
        absent = not present
        return all((v.lower() == "true") == absent for v in wanted)

    negated = base in _NEGATED
    positive = _NEGATED.get(base, base)
    if positive not in _POSITIVE:
        raise NotImplementedError(f"condition operator {operator} is not evaluated by this module")

    def matches(value: str) -> bool:
        hit = any(_one(positive, w, value) for w in wanted)
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        return not present or all(matches(v) for v in present)
    if qualifier == "ForAnyValue":
        return bool(present) and any(matches(v) for v in present)
    if qualifier:
        raise NotImplementedError(f"set qualifier {qualifier} is not evaluated by this module")
    if present is None:
        return if_exists or negated
    if negated:
        # A negated operator holds when no request value matches any policy value.
        return all(matches(v) for v in present)
    return any(matches(v) for v in present)


def conditions_hold(
    block: Mapping[str, Mapping[str, Any]], context: Mapping[str, ContextValue]
) -> bool:
    return all(
        condition_holds(operator, key, values, context)
        for operator, keys in block.items()
        for key, values in keys.items()
    )


# ------------------------------------------------------------------------------------------
# Statements and policies


def statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return _as_list(policy.get("Statement"))


def statement_matches(statement: Mapping[str, Any], request: Request) -> bool:
    if "Action" in statement:
        if not any(action_matches(p, request.action) for p in _as_list(statement["Action"])):
            return False
    elif "NotAction" in statement:
        if any(action_matches(p, request.action) for p in _as_list(statement["NotAction"])):
            return False
    else:
        raise ValueError(f"statement {statement.get('Sid', '?')} has neither Action nor NotAction")
    if "Resource" in statement:
        if not any(arn_matches(p, request.resource) for p in _as_list(statement["Resource"])):
            return False
    elif "NotResource" in statement:
        if any(arn_matches(p, request.resource) for p in _as_list(statement["NotResource"])):
            return False
    else:
        raise ValueError(
            f"statement {statement.get('Sid', '?')} has neither Resource nor NotResource"
        )
    return conditions_hold(statement.get("Condition", {}), request.context)


def evaluate(policy: Mapping[str, Any], request: Request) -> Decision:
    allowing: list[str] = []
    for index, statement in enumerate(statements(policy)):
        effect = statement.get("Effect")
        if effect not in ("Allow", "Deny"):
            raise ValueError(f"statement {statement.get('Sid', index)}: Effect {effect!r}")
        if not statement_matches(statement, request):
            continue
        sid = str(statement.get("Sid", f"#{index}"))
        if effect == "Deny":
            return Decision(False, f"explicitly denied by {sid}", (sid,))
        allowing.append(sid)
    if allowing:
        return Decision(True, "allowed by " + ", ".join(allowing), tuple(allowing))
    return Decision(False, "no statement allows it")
