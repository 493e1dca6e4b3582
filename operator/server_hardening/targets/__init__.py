"""Adapters, one per target: the only code that talks to an API.

Each adapter observes (never mutating) and applies a :class:`~server_hardening.drift.Plan`
(idempotently, creating and updating before deleting). SDK types never leave an adapter: it
translates to :mod:`server_hardening.drift` items at the boundary, and SDK errors once, into
:class:`~server_hardening.targets.base.TransientTargetError` or
:class:`~server_hardening.targets.base.PermanentTargetError`.
"""
