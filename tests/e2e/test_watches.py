"""The operator's NetworkPolicy watch against the real kube-apiserver: what it delivers
(listings replacing what was known, events on top) always adds up to what the API holds,
through creates, edits, deletions, and an API-server restart with a deletion right after it,
while the watch is still waiting to reconnect. And it stops at once, mid-call."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kubernetes import client

from e2e.harness import wait_for
from server_hardening.targets.kubeapi import KubeApi
from server_hardening.targets.kubeconfig import load_credentials
from server_hardening.targets.watches import NETWORKPOLICIES, Versions, Watch

pytestmark = [pytest.mark.e2e]


class Known:
    """What a sink knows after applying every delivery as the operator does: a listing replaces
    the kind's versions in its scope, an event changes one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.versions: Versions = {}
        self.listings = 0

    def listed(self, kind: str, namespace: str | None, versions: Versions) -> None:
        with self.lock:
            self.versions = {ns: dict(names) for ns, names in versions.items()}
            self.listings += 1

    def changed(self, kind: str, namespace: str, name: str, version: str) -> None:
        with self.lock:
            names = self.versions.setdefault(namespace, {})
            if version:
                names[name] = version
            else:
                names.pop(name, None)

    def of(self, namespace: str) -> dict[str, str]:
        with self.lock:
            return dict(self.versions.get(namespace, {}))


def _policy(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def _held(net: Any, namespace: str) -> dict[str, str]:
    items = net.list_namespaced_network_policy(namespace).items
    return {p.metadata.name: p.metadata.resource_version for p in items}


def test_what_the_watch_delivers_adds_up_to_what_the_api_holds(
    control_plane: Any, admin_api: Any, namespace: str
) -> None:
    net = client.NetworkingV1Api(admin_api)
    for name in ("a", "b", "c"):
        net.create_namespaced_network_policy(namespace, _policy(name))
    known = Known()
    api = KubeApi(load_credentials(str(control_plane.admin_kubeconfig)))
    watch = Watch(api, NETWORKPOLICIES, None, known).start()
    try:

        def agrees() -> bool:
            return known.of(namespace) == _held(net, namespace)

        wait_for("the first listing", agrees, timeout=30)
        assert known.listings == 1
        net.create_namespaced_network_policy(namespace, _policy("d"))
        net.patch_namespaced_network_policy("a", namespace, {"metadata": {"labels": {"x": "1"}}})
        net.delete_namespaced_network_policy("b", namespace)
        wait_for("the events", agrees, timeout=30)
        assert set(known.of(namespace)) == {"a", "c", "d"}

        control_plane.restart_apiserver(down_for=3)
        # At once, while the watch is still backing off from the outage: it learns of this
        # from the events it resumes with or, if its version is gone, from a new listing.
        net.delete_namespaced_network_policy("c", namespace)
        wait_for("the deletion after the restart", agrees, timeout=60)
        assert set(known.of(namespace)) == {"a", "d"}
    finally:
        # A watch call runs for minutes; stop() shuts its connection instead of waiting it out.
        watch.stop(timeout=30)
        api.close()
    assert watch._thread is not None and not watch._thread.is_alive()
