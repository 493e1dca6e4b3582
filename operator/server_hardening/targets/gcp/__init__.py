"""The GCP target (the only package that imports google.cloud): :mod:`.adapter` observes and
executes, :mod:`.client` builds the clients and translates their errors; unmanaged firewalls are
judged by :mod:`server_hardening.policy.gcp`."""

from server_hardening.targets.gcp.adapter import GcpTarget, owned_names
from server_hardening.targets.gcp.client import GcpClients, make_clients
from server_hardening.targets.retry import RetryPolicy

__all__ = ["GcpClients", "GcpTarget", "RetryPolicy", "make_clients", "owned_names"]
