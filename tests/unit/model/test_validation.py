"""The model refuses bad input with the field path and the reason, and accepts what the guide
allows (IPv4 and IPv6 alike)."""

from __future__ import annotations

import pytest

from builders import example_body, example_names, make_spec, spec_dict
from server_hardening.model import Mode, SpecError, parse_resource, parse_spec


def errors_of(spec: dict[str, object]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    return [str(e) for e in caught.value.errors]


@pytest.mark.parametrize("name", example_names())
def test_every_example_is_a_valid_resource(name: str) -> None:
    ref, spec = parse_resource(example_body(name))
    assert ref.namespace == "circleci-server"
    assert spec.topology.kubernetes_nodes.cidrs


def test_a_bad_cidr_is_named_by_its_index() -> None:
    spec = spec_dict(
        **{"topology.nomadClients": {"cidrs": ["10.1.0.0/16", "10.9.0.0/16", "10.0.0.300/24"]}}
    )
    assert errors_of(spec) == [
        'spec.topology.nomadClients.cidrs[2]: "10.0.0.300/24" is not a valid CIDR'
    ]


def test_an_unknown_field_is_refused() -> None:
    assert errors_of(spec_dict(**{"topology.nomadClient": {"cidrs": []}})) == [
        'spec.topology.nomadClient: unknown field "nomadClient": did you mean nomadClients?'
    ]


def test_a_wrong_enum_names_the_choices() -> None:
    assert errors_of(spec_dict(mode="Enforcing")) == [
        'spec.mode: "Enforcing" is not one of Enforce, Audit: did you mean Enforce?'
    ]


def test_required_roles_must_be_present() -> None:
    spec = spec_dict()
    del spec["topology"]["nomadClients"]  # type: ignore[index,attr-defined]
    assert errors_of(spec) == ["spec.topology.nomadClients: required field is missing"]


def test_a_reversed_port_range_is_refused() -> None:
    spec = spec_dict(**{"topology.loadBalancers": {"nodePortRange": {"from": 32767, "to": 30000}}})
    assert errors_of(spec) == [
        "spec.topology.loadBalancers.nodePortRange: from (32767) is greater than to (30000)"
    ]


def test_a_port_outside_the_range_is_refused() -> None:
    spec = spec_dict(**{"topology.loadBalancers": {"nodePortRange": {"from": 0, "to": 70000}}})
    messages = errors_of(spec)
    assert "spec.topology.loadBalancers.nodePortRange.from: 0 is below the minimum 1" in messages
    assert (
        "spec.topology.loadBalancers.nodePortRange.to: 70000 is above the maximum 65535" in messages
    )


def test_overlapping_roles_name_both_fields() -> None:
    spec = spec_dict(**{"topology.nomadClients": {"cidrs": ["10.0.128.0/20"]}})
    assert errors_of(spec) == [
        "spec.topology.nomadClients.cidrs[0]: 10.0.128.0/20 overlaps "
        "spec.topology.kubernetesNodes.cidrs[0] (10.0.0.0/16); the guide requires distinct "
        "subnets per role"
    ]


@pytest.mark.parametrize("world", ["0.0.0.0/0", "::/0"])
def test_admin_ssh_from_the_world_is_refused(world: str) -> None:
    spec = spec_dict(**{"access.adminSSH": {"enabled": True, "sources": ["192.0.2.0/24", world]}})
    (message,) = errors_of(spec)
    assert message.startswith(f"spec.access.adminSSH.sources[1]: {world} opens SSH to the world")


@pytest.mark.parametrize(
    ("sources", "family"),
    [
        (["0.0.0.0/1", "128.0.0.0/1"], 4),
        (["0.0.0.0/2", "192.0.2.0/24", "64.0.0.0/2", "128.0.0.0/1"], 4),
        (["::/1", "8000::/1"], 6),
        (["::/1", "4000::/2", "8000::/1", "c000::/3"], 6),  # overlapping halves
    ],
)
def test_admin_ssh_from_the_world_in_pieces_is_refused(sources: list[str], family: int) -> None:
    spec = spec_dict(**{"access.adminSSH": {"enabled": True, "sources": sources}})
    (message,) = errors_of(spec)
    assert message.startswith("spec.access.adminSSH.sources: ")
    assert f"together open SSH to the whole IPv{family} internet" in message
    assert "[0] " in message


@pytest.mark.parametrize("spelling", ["::0/0", "1.2.3.4/0", "0:0::0/0", "255.255.255.255/0"])
def test_admin_ssh_from_the_world_in_another_spelling_is_refused(spelling: str) -> None:
    spec = spec_dict(**{"access.adminSSH": {"enabled": True, "sources": [spelling]}})
    (message,) = errors_of(spec)
    assert message.startswith("spec.access.adminSSH.sources[0]: ")
    assert "opens SSH to the world" in message or "is the whole internet" in message


def test_admin_ssh_from_half_the_internet_is_not_the_world() -> None:
    spec = make_spec(**{"access.adminSSH": {"enabled": True, "sources": ["0.0.0.0/1"]}})
    assert spec.access.admin_ssh.sources == ["0.0.0.0/1"]


def test_admin_ssh_needs_sources_when_enabled() -> None:
    assert errors_of(spec_dict(**{"access.adminSSH": {"enabled": True}})) == [
        "spec.access.adminSSH.sources: required when adminSSH is enabled"
    ]


def test_external_vms_need_cidrs_when_enabled() -> None:
    assert errors_of(spec_dict(**{"topology.externalVMs": {"enabled": True}})) == [
        "spec.topology.externalVMs.cidrs: required when externalVMs is enabled"
    ]


@pytest.mark.parametrize("version", ["5", "2", "v4.3", "", "4.x.1", "4.", "3.X", "4.3-rc1"])
def test_a_server_version_without_a_profile_is_refused(version: str) -> None:
    (message,) = errors_of(spec_dict(serverVersion=version))
    assert message.startswith("spec.serverVersion: ")


@pytest.mark.parametrize(
    "version", ["3", "3.x", "3.4", "3.4.1", "4", "4.x", "4.0", "4.2.1", "4.10", "4.11", "4.25.3"]
)
def test_server_versions_as_people_write_them_are_accepted(version: str) -> None:
    assert make_spec(serverVersion=version).server_version == version


@pytest.mark.parametrize(
    ("interval", "seconds"),
    [("60s", 60), ("2m", 120), ("5s", 5), ("90s", 90), ("1m30s", 90), ("2h", 7200),
     ("1h30m0s", 5400), ("1s", 1)],
)  # fmt: skip
def test_drift_check_intervals_are_go_durations(interval: str, seconds: int) -> None:
    assert make_spec(driftCheckInterval=interval).drift_check_seconds == seconds


@pytest.mark.parametrize("interval", ["0s", "0m0s", "1.5s", "90", "1d", "-1s", "1 m", "500ms"])
def test_a_bad_drift_check_interval_is_refused(interval: str) -> None:
    (message,) = errors_of(spec_dict(driftCheckInterval=interval))
    assert message.startswith("spec.driftCheckInterval: ")


def test_host_bits_are_refused_naming_the_network_they_lie_in() -> None:
    spec = spec_dict(
        **{"topology.kubernetesNodes": {"cidrs": ["10.40.1.0/19", "2001:db8::1/32", "::/0"]}}
    )
    assert errors_of(spec) == [
        'spec.topology.kubernetesNodes.cidrs[0]: "10.40.1.0/19" has host bits set: the /19 '
        "network it lies in is 10.40.0.0/19; write that, or a longer prefix if you meant a "
        "smaller subnet",
        'spec.topology.kubernetesNodes.cidrs[1]: "2001:db8::1/32" has host bits set: the /32 '
        "network it lies in is 2001:db8::/32; write that, or a longer prefix if you meant a "
        "smaller subnet",
    ]


def test_a_recorded_spec_with_host_bits_is_read_as_it_was_enforced() -> None:
    """status.lastValidSpec from before host bits were refused: enforcement never stops."""
    spec = parse_spec(
        spec_dict(**{"topology.kubernetesNodes": {"cidrs": ["10.0.0.7/16"]}}), recorded=True
    )
    assert spec.topology.kubernetes_nodes.cidrs == ["10.0.0.0/16"]


def test_ipv6_is_accepted_in_any_case() -> None:
    spec = make_spec(
        **{"topology.kubernetesNodes": {"cidrs": ["10.0.0.0/16", "2001:DB8:0:1::/64"]}}
    )
    assert spec.topology.kubernetes_nodes.cidrs == ["10.0.0.0/16", "2001:db8:0:1::/64"]


def test_defaults_follow_the_api_contract() -> None:
    spec = make_spec()
    assert spec.mode is Mode.ENFORCE
    assert spec.topology.external.cidrs == ["0.0.0.0/0"]
    assert spec.access.ssh_rerun.enabled and not spec.access.admin_ssh.enabled
    assert spec.drift_check_seconds == 60
    assert (
        spec.topology.load_balancers.node_port_range.from_,
        spec.topology.load_balancers.node_port_range.to,
    ) == (30000, 32767)


def frontend(component: dict[str, object]) -> dict[str, object]:
    return spec_dict(**{"kubernetes.components": {"frontend": component}})


def test_a_component_is_written_as_a_kubernetes_user_writes_it() -> None:
    spec = parse_spec(
        frontend(
            {
                "podSelector": {
                    "matchLabels": {"app": "kong"},
                    "matchExpressions": [
                        {"key": "app.kubernetes.io/part-of", "operator": "In", "values": ["a"]},
                        {"key": "canary", "operator": "DoesNotExist"},
                    ],
                },
                "ports": [8000, 8443, "http"],
            }
        )
    )
    component = spec.kubernetes.components.frontend
    assert component is not None and component.pod_selector is not None
    assert component.pod_selector.match_labels == {"app": "kong"}
    assert [e.operator.value for e in component.pod_selector.match_expressions] == [
        "In",
        "DoesNotExist",
    ]
    assert component.ports == [8000, 8443, "http"]


def test_a_component_pinned_by_selector_needs_ports() -> None:
    assert errors_of(frontend({"podSelector": {"matchLabels": {"app": "frontend"}}})) == [
        "spec.kubernetes.components.frontend.ports: required with podSelector"
    ]


def test_a_component_takes_a_service_or_a_selector_not_both() -> None:
    spec = frontend({"service": "x", "podSelector": {"matchLabels": {"a": "b"}}, "ports": [80]})
    assert errors_of(spec) == [
        "spec.kubernetes.components.frontend: set either service or podSelector, not both"
    ]


def test_ports_beside_a_service_are_refused_at_ports() -> None:
    (message,) = errors_of(frontend({"service": "kong", "ports": [8000]}))
    assert message.startswith(
        "spec.kubernetes.components.frontend.ports: ports come from the Service's targetPorts"
    )


def test_an_empty_selector_is_refused() -> None:
    assert errors_of(frontend({"podSelector": {}, "ports": [80]})) == [
        "spec.kubernetes.components.frontend.podSelector: must not be empty (an empty selector "
        "selects every pod)"
    ]


def test_the_old_flat_selector_names_the_unknown_label() -> None:
    assert errors_of(frontend({"podSelector": {"app": "kong"}, "ports": [80]})) == [
        'spec.kubernetes.components.frontend.podSelector.app: unknown field "app" (the fields '
        "here: matchLabels, matchExpressions)"
    ]


@pytest.mark.parametrize(
    ("port", "reason"),
    [
        (70000, "port 70000 is outside 1-65535"),
        (0, "port 0 is outside 1-65535"),
        ("HTTP", "port name 'HTTP' is not a valid IANA service name"),
        ("8000", "port name '8000' is not a valid IANA service name"),
        ("a--b", "port name 'a--b' is not a valid IANA service name"),
        ("sixteen-letters1", "port name 'sixteen-letters1' is not a valid IANA service name"),
        ({"port": 8080}, "a port is a number or a container port name: write 8080 rather"),
    ],
)
def test_a_bad_port_is_named_by_its_index(port: object, reason: str) -> None:
    spec = frontend({"podSelector": {"matchLabels": {"app": "kong"}}, "ports": [80, port]})
    (message,) = errors_of(spec)
    assert message.startswith(f"spec.kubernetes.components.frontend.ports[1]: {reason}")


@pytest.mark.parametrize(
    ("expression", "path", "reason"),
    [
        ({"key": "a", "operator": "In"}, "values", "values must be non-empty for operator In"),
        ({"key": "a", "operator": "NotIn", "values": []}, "values", "values must be non-empty"),
        ({"key": "a", "operator": "Exists", "values": ["x"]}, "values", "values must be empty"),
        ({"key": "a", "operator": "Has"}, "operator", '"Has" is not one of'),
        ({"key": "-a", "operator": "Exists"}, "key", "'-a' is not a valid label key"),
        ({"key": "a/b/c", "operator": "Exists"}, "key", "'a/b/c' is not a valid label key"),
        (
            {"key": "a", "operator": "In", "values": ["-x"]},
            "values[0]",
            '"-x" is not a label value',
        ),
    ],
)
def test_a_bad_match_expression_is_named_as_kubernetes_would(
    expression: dict[str, object], path: str, reason: str
) -> None:
    spec = frontend({"podSelector": {"matchExpressions": [expression]}, "ports": [80]})
    (message,) = errors_of(spec)
    prefix = f"spec.kubernetes.components.frontend.podSelector.matchExpressions[0].{path}: "
    assert message.startswith(prefix + reason)


@pytest.mark.parametrize("key", ["-a", "a" * 64, "x" * 254 + "/a", "a_b/c"])
def test_a_bad_label_key_is_refused(key: str) -> None:
    spec = frontend({"podSelector": {"matchLabels": {key: "v"}}, "ports": [80]})
    (message,) = errors_of(spec)
    assert message.startswith(
        f"spec.kubernetes.components.frontend.podSelector.matchLabels: {key!r}"
    )


@pytest.mark.parametrize("key", ["app", "app.kubernetes.io/name", "a" * 63, "x" * 253 + "/a"])
def test_a_good_label_key_is_kept(key: str) -> None:
    parse_spec(frontend({"podSelector": {"matchLabels": {key: "v"}}, "ports": [80]}))


def test_a_bad_security_group_id_is_named() -> None:
    spec = spec_dict(aws={"region": "us-east-1", "securityGroups": {"nomadClients": "sg-XYZ"}})
    (message,) = errors_of(spec)
    assert message == (
        'spec.aws.securityGroups.nomadClients: "sg-XYZ" is not a security group ID (sg- and 8 '
        "or 17 hex digits, e.g. sg-0123456789abcdef0)"
    )


def test_a_missing_spec_is_refused() -> None:
    with pytest.raises(SpecError, match="spec: required field is missing"):
        parse_spec(None)


def test_a_resource_of_another_kind_is_refused() -> None:
    body = example_body("kubernetes-only")
    body["kind"] = "NetworkPolicy"
    with pytest.raises(SpecError, match='kind: "NetworkPolicy": expected ServerHardening'):
        parse_resource(body)


@pytest.mark.parametrize("version", ["4.8", "4.10.2", "4", "4.x", "4.11"])
def test_external_nomad_servers_are_accepted_from_4_8(version: str) -> None:
    spec = make_spec(serverVersion=version, **{"topology.nomadServers": {"cidrs": ["10.3.0.0/24"]}})
    assert spec.topology.nomad_servers is not None


@pytest.mark.parametrize("version", ["4.7", "4.3", "3.x", "4.0"])
def test_external_nomad_servers_before_4_8_are_refused(version: str) -> None:
    spec = spec_dict(serverVersion=version, **{"topology.nomadServers": {"cidrs": ["10.3.0.0/24"]}})
    assert errors_of(spec) == [
        "spec.topology.nomadServers: Nomad servers outside the cluster need serverVersion 4.8 "
        "or later"
    ]


def test_nomad_servers_overlapping_the_clients_are_named() -> None:
    spec = spec_dict(serverVersion="4.8", **{"topology.nomadServers": {"cidrs": ["10.1.2.0/24"]}})
    (message,) = errors_of(spec)
    assert message.startswith(
        "spec.topology.nomadServers.cidrs[0]: 10.1.2.0/24 overlaps spec.topology.nomadClients"
    )


def _aws(groups: dict[str, str]) -> dict[str, object]:
    return {"region": "us-east-1", "securityGroups": groups}


def test_one_security_group_for_nomad_clients_and_nodes_is_refused_naming_both_fields() -> None:
    shared = "sg-0123456789abcdef0"
    with pytest.raises(SpecError) as caught:
        parse_spec(spec_dict(aws=_aws({"kubernetesNodes": shared, "nomadClients": shared})))
    [error] = [e for e in caught.value.errors if "securityGroups" in e.path]
    assert error.path == "spec.aws.securityGroups.nomadClients"
    assert "spec.aws.securityGroups.kubernetesNodes" in error.reason
    assert "NOMAD-ISO-1" in error.reason


def test_one_tag_for_vms_and_nomad_clients_is_refused_once() -> None:
    gcp = {"project": "circleci-prod-1234", "network": "circleci",
           "targetTags": {"nomadClients": "ci", "externalVMs": "ci", "kubernetesNodes": "k8s"}}  # fmt: skip
    with pytest.raises(SpecError) as caught:
        parse_spec(spec_dict(gcp=gcp))
    shared = [e for e in caught.value.errors if "targetTags" in e.path]
    assert len(shared) == 1 and "externalVMs" in shared[0].path + shared[0].reason


def test_nodes_and_load_balancers_may_share_a_group() -> None:
    shared = "sg-0123456789abcdef0"
    spec = parse_spec(spec_dict(aws=_aws({"kubernetesNodes": shared, "loadBalancers": shared})))
    assert spec.aws is not None


@pytest.mark.parametrize("spelling", ["server_version", "ServerVersion", "server-version"])
def test_a_field_in_another_spelling_is_one_error_with_the_spelling_meant(spelling: str) -> None:
    spec = spec_dict()
    spec[spelling] = spec.pop("serverVersion")
    assert errors_of(spec) == [
        f'spec.{spelling}: unknown field "{spelling}": did you mean serverVersion?'
    ]
