"""Builds the live targets a resource configures. Adapters are constructed lazily, per target,
so one target's error (a missing credential, a Service that cannot be read) stays its own."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from server_hardening.compiler import CompiledIntent
from server_hardening.model import ResourceRef
from server_hardening.targets.base import AnyTarget, ApiCallRecorder, ignore_call


def _no_recorder(target: str) -> ApiCallRecorder:
    return ignore_call


class LiveTargets:
    """The production wiring: the Kubernetes API client the operator runs with, and the cloud
    SDKs' default credential chains (overridable for tests and private endpoints)."""

    def __init__(
        self,
        kube_api: Any,
        *,
        recorder: Callable[[str], ApiCallRecorder] = _no_recorder,
        aws_client_factory: Callable[..., Any] | None = None,
        gcp_client_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.kube_api = kube_api
        self.recorder = recorder
        self.aws_client_factory = aws_client_factory
        self.gcp_client_factory = gcp_client_factory

    def _node_ports(self, namespace: str) -> dict[int, tuple[str, int]]:
        """The namespace's NodePorts, for judging cloud rules (an NLB Service's rule on the
        nodes' security group opens a NodePort, which may be Nomad's 4647 behind the proxy)."""
        if self.kube_api is None:
            return {}
        from server_hardening.targets.kubernetes import node_ports_of

        return node_ports_of(self.kube_api, namespace, self.recorder("kubernetes"))

    def build(
        self,
        intent: CompiledIntent,
        ref: ResourceRef,
        remembered: Sequence[Mapping[str, Any]] = (),
    ) -> list[tuple[str, Callable[[], AnyTarget]]]:
        """The targets ``intent`` configures; ``remembered`` is what the resource's status
        recalls from the last pass (``status.resolvedComponents``)."""
        spec = intent.spec
        builders: list[tuple[str, Callable[[], AnyTarget]]] = []
        if spec.kubernetes.network_policies.enabled:

            def kubernetes() -> AnyTarget:
                from server_hardening.targets.kubernetes import (
                    KubernetesTarget,
                    resolve_components,
                )

                record = self.recorder("kubernetes")
                resolved, findings, gone = resolve_components(
                    self.kube_api, ref.namespace, intent, record, remembered
                )
                return KubernetesTarget(
                    intent,
                    ref,
                    self.kube_api,
                    resolved,
                    record_call=record,
                    findings=findings,
                    services_gone=gone,
                )

            builders.append(("kubernetes", kubernetes))
        aws = spec.aws
        if aws is not None:

            def aws_target() -> AnyTarget:
                from server_hardening.targets.aws import AwsTarget

                kwargs: dict[str, Any] = {"node_ports": self._node_ports(ref.namespace)}
                if self.aws_client_factory is not None:
                    kwargs["client_factory"] = self.aws_client_factory
                return AwsTarget.from_intent(
                    intent,
                    aws,
                    ref,
                    record_call=self.recorder("aws"),
                    **kwargs,
                )

            builders.append(("aws", aws_target))
        gcp = spec.gcp
        if gcp is not None:

            def gcp_target() -> AnyTarget:
                from server_hardening.targets.gcp import GcpTarget

                kwargs: dict[str, Any] = {}
                if self.gcp_client_factory is not None:
                    kwargs["client_factory"] = self.gcp_client_factory
                return GcpTarget.from_rules(
                    intent.cloud_rules("gcp"),
                    gcp,
                    ref,
                    unmanaged_rules=spec.unmanaged_rules,
                    record_call=self.recorder("gcp"),
                    **kwargs,
                )

            builders.append(("gcp", gcp_target))
        return builders
