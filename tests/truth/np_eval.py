"""NetworkPolicy semantics for the truth tables over rendered policies: the product's own
(``server_hardening.policy.podreach``), which ``hardening verify`` also answers with. Its
independent check is the field tier, where kube-router enforces the same policies on real
packets and each verdict is a TCP connection."""

from typing import Any

from server_hardening.policy.podreach import Outside, Party, Pod, decide

__all__ = ["Outside", "Party", "Pod", "allows"]


def allows(*args: Any, **kwargs: Any) -> bool:
    """Both ends allow: :func:`~server_hardening.policy.podreach.decide`'s verdict alone."""
    return decide(*args, **kwargs).allowed
