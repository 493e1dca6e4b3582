"""Patches that make moto's EC2 behave as EC2 does where this project depends on it.

Used by the AWS test double and by ``hardening demo`` (moto is a dev dependency: import this
module only where moto is installed). moto gaps that nothing depends on are listed in
tests/adapters/aws/double.py.

- ``DescribeSecurityGroupRules`` pages (``MaxResults``/``NextToken``); moto returns everything at
  once, which would hide the adapter's page counts.
- A rule that references another group keeps its ``Description``; moto reads descriptions only
  from IP ranges, so every such managed rule would look modified at every check.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moto.core.responses import ActionResult
from moto.ec2.models.security_groups import SecurityGroupRule
from moto.ec2.responses.security_groups import SecurityGroups


def _paged_describe_security_group_rules(self: Any) -> ActionResult:
    self.error_on_dryrun()
    rule_ids = self._get_param("SecurityGroupRuleIds", [])
    filters = self._filters_from_querystring()
    rules = self.ec2_backend.describe_security_group_rules(rule_ids, filters)
    rules.sort(key=lambda r: r.id)
    size = int(self._get_param("MaxResults") or 0)
    start = int(self._get_param("NextToken") or 0)
    page = rules[start : start + size] if size else rules[start:]
    result: dict[str, Any] = {"SecurityGroupRules": page}
    if size and start + size < len(rules):
        result["NextToken"] = str(start + size)
    return ActionResult(result)


def _description(self: Any) -> str | None:
    value = self.ip_range.get("Description") or (self.source_group or {}).get("Description")
    return None if value is None else str(value)


@contextmanager
def patched_moto() -> Iterator[None]:
    """Apply both patches to the moto running in this process; undo them on exit."""
    saved = (
        SecurityGroups.describe_security_group_rules,
        SecurityGroupRule.__dict__["description"],
    )
    SecurityGroups.describe_security_group_rules = _paged_describe_security_group_rules  # type: ignore[method-assign]
    SecurityGroupRule.description = property(_description)  # type: ignore[assignment,method-assign]
    try:
        yield
    finally:
        SecurityGroups.describe_security_group_rules = saved[0]  # type: ignore[method-assign]
        SecurityGroupRule.description = saved[1]  # type: ignore[method-assign]
