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
        "spec.topology.nomadClients.cidrs[2]: '10.0.0.300/24' is not a valid CIDR"
    ]


def test_an_unknown_field_is_refused() -> None:
    assert errors_of(spec_dict(**{"topology.nomadClient": {"cidrs": []}})) == [
        "spec.topology.nomadClient: unknown field"
    ]


def test_a_wrong_enum_names_the_choices() -> None:
    assert errors_of(spec_dict(mode="Enforcing")) == [
        "spec.mode: 'Enforcing' is not one of 'Enforce' or 'Audit'"
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
    assert (
        "spec.topology.loadBalancers.nodePortRange.from: Input should be greater than or equal to 1"
        in messages
    )
    assert (
        "spec.topology.loadBalancers.nodePortRange.to: Input should be less than or equal to 65535"
        in messages
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
    assert "opens SSH to the world" in message


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


@pytest.mark.parametrize("version", ["5", "4.11", "2", "4.3.1", "v4.3", ""])
def test_a_server_version_without_a_profile_is_refused(version: str) -> None:
    (message,) = errors_of(spec_dict(serverVersion=version))
    assert message.startswith("spec.serverVersion: ")


def test_ipv6_is_accepted_and_host_bits_are_cleared() -> None:
    spec = make_spec(
        **{"topology.kubernetesNodes": {"cidrs": ["10.0.0.7/16", "2001:db8:0:1::5/64"]}}
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


def test_a_component_pinned_by_selector_needs_ports() -> None:
    spec = spec_dict(
        **{"kubernetes.components": {"frontend": {"podSelector": {"app": "frontend"}}}}
    )
    assert errors_of(spec) == ["spec.kubernetes.components.frontend: podSelector needs ports"]


def test_a_component_takes_a_service_or_a_selector_not_both() -> None:
    spec = spec_dict(
        **{
            "kubernetes.components": {
                "frontend": {"service": "x", "podSelector": {"a": "b"}, "ports": [{"port": 80}]}
            }
        }
    )
    assert errors_of(spec) == [
        "spec.kubernetes.components.frontend: set either service or podSelector, not both"
    ]


def test_a_bad_security_group_id_is_named() -> None:
    spec = spec_dict(aws={"region": "us-east-1", "securityGroups": {"nomadClients": "sg-XYZ"}})
    (message,) = errors_of(spec)
    assert message.startswith("spec.aws.securityGroups.nomadClients: 'sg-XYZ' does not match")


def test_a_missing_spec_is_refused() -> None:
    with pytest.raises(SpecError, match="spec: required field is missing"):
        parse_spec(None)


def test_a_resource_of_another_kind_is_refused() -> None:
    body = example_body("kubernetes-only")
    body["kind"] = "NetworkPolicy"
    with pytest.raises(SpecError, match="kind: must be ServerHardening"):
        parse_resource(body)
