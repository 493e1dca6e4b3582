"""Declared exceptions (``spec.exceptions``): which observed item one excuses, and until when.
Pure: the time is passed in, never read here."""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections.abc import Sequence
from typing import Any

from server_hardening.drift import DeclaredException, ExceptionMatcher, ObservedItem
from server_hardening.model import DeclaredExceptionSpec


def matcher(
    exceptions: Sequence[DeclaredExceptionSpec], target: str, now: dt.datetime
) -> ExceptionMatcher[Any]:
    """The first exception of ``target`` whose name pattern matches an item's native ID (a
    NetworkPolicy name, a security-group rule ID, a firewall name), expired or not."""
    mine = [(i, e) for i, e in enumerate(exceptions) if e.target.value == target]

    def match(item: ObservedItem[Any]) -> DeclaredException | None:
        for index, exception in mine:
            if fnmatch.fnmatchcase(item.native_id or item.key, exception.name):
                expired = exception.expires is not None and exception.expires <= now
                return DeclaredException(index, exception.reason, expired)
        return None

    return match
