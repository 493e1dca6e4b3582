"""The unit tier loads kopf and the handlers as the image does: without the official Kubernetes
client.

The product has its own client (``targets.kubeapi``); the official one is installed in the dev
venv only for the e2e, field and packaging tiers, and kopf imports it whenever it can (for its
optional support of that client's model objects, and its default login), which was about 0.8 s
of this tier's start. Run with the other tiers, those have imported it already and nothing
changes here."""

from __future__ import annotations

import sys

if "kubernetes" not in sys.modules and "kopf" not in sys.modules:
    sys.modules["kubernetes"] = None  # type: ignore[assignment]  # makes the import fail
    try:
        import kopf  # noqa: F401

        import server_hardening.handlers  # noqa: F401  # kopf's registry looks for it too
    finally:
        del sys.modules["kubernetes"]
