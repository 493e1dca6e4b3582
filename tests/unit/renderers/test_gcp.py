"""The GCP firewall renderer: names, descriptions, merging, priority bands, normalising, judging."""

from __future__ import annotations

import ipaddress
from typing import Any

from builders import OWNER, make_spec
from server_hardening.compiler import compile_intent
from server_hardening.drift import fingerprint
from server_hardening.model import GcpSpec, ResourceRef, ServerHardeningSpec
from server_hardening.ownership import (
    DESCRIPTION_MARKER,
    description_owner,
    gcp_name_prefix,
    owner_key,
    released_description,
)
from server_hardening.policy.gcp import judge_firewall
from server_hardening.renderers.gcp import (
    ALLOW_PRIORITY,
    FLOOR_PRIORITY,
    ISOLATION_PRIORITY,
    RenderedFirewalls,
    is_valid_name,
    normalise_firewall,
    render_firewalls,
)
from server_hardening.rules import (
    Action,
    Direction,
    Peer,
    PeerKind,
    PortRange,
    Protocol,
    Role,
    Rule,
    Severity,
)

TAGS = {"kubernetesNodes": "k8s-node", "nomadClients": "nomad-client", "externalVMs": "circleci-vm"}


def spec(**changes: Any) -> ServerHardeningSpec:
    gcp: dict[str, Any] = {"project": "proj-12345", "network": "circleci", "targetTags": dict(TAGS)}
    gcp.update(changes.pop("gcp", {}))
    return make_spec(gcp=gcp, **changes)


def render(s: ServerHardeningSpec, owner: ResourceRef = OWNER) -> RenderedFirewalls:
    assert s.gcp is not None
    return render_firewalls(compile_intent(s).cloud_rules("gcp"), s.gcp, owner)


def by_name(rendered: RenderedFirewalls) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in rendered.firewalls}


def test_names_are_prefixed_valid_unique_and_stable() -> None:
    long_owner = ResourceRef("a" * 63, "b" * 253, "uid")
    for owner in (OWNER, long_owner):
        rendered = render(spec(), owner)
        names = [f["name"] for f in rendered.firewalls]
        assert len(names) == len(set(names))
        assert all(is_valid_name(n) and n.startswith(gcp_name_prefix(owner)) for n in names)
    s = spec()
    assert s.gcp is not None
    rules = list(compile_intent(s).cloud_rules("gcp"))
    shuffled = rules[::-1]
    assert render_firewalls(shuffled, s.gcp, OWNER) == render_firewalls(rules, s.gcp, OWNER)


def test_descriptions_mark_the_owner_and_cite_every_row() -> None:
    rendered = render(spec())
    cited: set[str] = set()
    for body in rendered.firewalls:
        assert body["description"].startswith(f"{DESCRIPTION_MARKER} {owner_key(OWNER)} [")
        assert description_owner(body["description"]) == owner_key(OWNER)
        rows = rendered.rows_by_name[body["name"]]
        assert rows and all(r in body["description"] for r in rows)
        cited.update(rows)
    assert {
        "NOMAD-ISO-1",
        "VM-ISO-1",
        "NOMAD-IN-1",
        "K8S-IN-1",
        "CHOICE-GCP-HEALTH-CHECKS",
    } <= cited
    released = released_description(rendered.firewalls[0]["description"])
    assert (description_owner(released) == "" and "NOMAD" in released) or "[" in released


def test_priority_bands_and_peers() -> None:
    fws = by_name(render(spec()))
    prefix = gcp_name_prefix(OWNER)
    deny = fws[f"{prefix}nomad-in-deny-nomad"]
    assert deny["priority"] == ISOLATION_PRIORITY and deny["denied"] == [{"IPProtocol": "all"}]
    # a deny matches by tag and by subnet: broader is safer
    assert deny["sourceTags"] == ["nomad-client"] and deny["sourceRanges"] == ["10.1.0.0/16"]
    # an allow from a plain-VM role uses the tag only
    from_nomad = fws[f"{prefix}k8s-in-allow-nomad"]
    assert from_nomad["priority"] == ALLOW_PRIORITY
    assert from_nomad["sourceTags"] == ["nomad-client"] and "sourceRanges" not in from_nomad
    assert from_nomad["allowed"] == [{"IPProtocol": "tcp", "ports": ["3000", "4647", "8585"]}]
    # the nodes as a source: tag and CIDRs (GKE pods send from alias IPs)
    from_k8s = fws[f"{prefix}nomad-in-allow-k8s"]
    assert from_k8s["sourceTags"] == ["k8s-node"] and from_k8s["sourceRanges"] == ["10.0.0.0/16"]
    hc = fws[f"{prefix}k8s-in-allow-hc"]
    assert hc["sourceRanges"] == ["130.211.0.0/22", "35.191.0.0/16"]
    assert hc["allowed"] == [{"IPProtocol": "tcp", "ports": ["30000-32767"]}]
    egress = fws[f"{prefix}nomad-eg-allow-vm"]
    assert egress["destinationRanges"] == ["10.2.0.0/16"] and "sourceTags" not in egress
    for role in ("k8s", "nomad", "vm"):
        assert fws[f"{prefix}{role}-in-deny-all"]["priority"] == FLOOR_PRIORITY
        assert fws[f"{prefix}{role}-eg-deny-all"]["priority"] == FLOOR_PRIORITY
    assert all(f["network"] == "projects/proj-12345/global/networks/circleci" for f in fws.values())


def covers(body: dict[str, Any], rule: Rule) -> bool:
    entries = body.get("allowed") or body.get("denied") or []
    ok_proto = False
    for entry in entries:
        if entry["IPProtocol"] == "all":
            ok_proto = True
        elif entry["IPProtocol"] == rule.protocol.value:
            if rule.ports is None:
                ok_proto = "ports" not in entry
            else:
                for text in entry.get("ports", ["1-65535"]):
                    first, _, last = text.partition("-")
                    if int(first) <= rule.ports.first and rule.ports.last <= int(last or first):
                        ok_proto = True
    if not ok_proto:
        return False
    key = "destinationRanges" if rule.direction is Direction.EGRESS else "sourceRanges"
    ranges = [ipaddress.ip_network(r) for r in body.get(key, [])]
    by_range = all(
        any(ipaddress.ip_network(c).subnet_of(r) for r in ranges if r.version == 4)  # type: ignore[arg-type]
        for c in rule.peer.cidrs
    )
    tag = TAGS.get(rule.peer.kind.value)
    return by_range or (tag is not None and tag in body.get("sourceTags", []))


def test_merging_keeps_every_rule_and_lowers_the_count() -> None:
    s = spec()
    assert s.gcp is not None
    rules = compile_intent(s).cloud_rules("gcp")
    rendered = render_firewalls(rules, s.gcp, OWNER)
    for rule in rules:
        tag = TAGS[rule.subject.value]
        candidates = [
            f
            for f in rendered.firewalls
            if f["targetTags"] == [tag]
            and f["direction"] == rule.direction.value.upper()
            and ("allowed" in f) == (rule.action is Action.ALLOW)
            and f["priority"] < FLOOR_PRIORITY
        ]
        assert any(covers(f, rule) and rule.rows <= set(f["description"].split("[")[1].split("]")[0].split(",")) for f in candidates), rule  # fmt: skip
    assert len([f for f in rendered.firewalls if f["priority"] < FLOOR_PRIORITY]) < len(rules)


def test_untagged_roles_and_open_egress_are_skipped_with_findings() -> None:
    rendered = render(
        spec(gcp={"targetTags": {"nomadClients": "nomad-client"}, "restrictEgress": False})
    )
    assert {f["targetTags"][0] for f in rendered.firewalls} == {"nomad-client"}
    codes = {f.code: f for f in rendered.findings}
    assert codes["GcpRoleUntagged"].severity is Severity.INFO
    assert "GcpEgressUnrestricted" in codes
    egress = [f for f in rendered.firewalls if f["direction"] == "EGRESS"]
    # only the isolation deny stays on egress
    assert [f["name"].split("-", 2)[2] for f in egress] == ["nomad-eg-deny-nomad"]


def test_ipv6_ranges_go_to_their_own_rule() -> None:
    rendered = render(spec(**{"topology.external": {"cidrs": ["0.0.0.0/0", "::/0"]}}))
    names = set(by_name(rendered))
    prefix = gcp_name_prefix(OWNER)
    assert f"{prefix}k8s-in-allow-ext-v6" in names and f"{prefix}k8s-in-allow-ext" in names
    assert f"{prefix}nomad-eg-deny-all-v6" in names
    for body in rendered.firewalls:
        ranges = body.get("sourceRanges", []) + body.get("destinationRanges", [])
        assert len({ipaddress.ip_network(r).version for r in ranges}) <= 1


def test_normalising_ignores_form_and_order() -> None:
    a = {
        "name": "x",
        "network": "https://www.googleapis.com/compute/v1/projects/p-12345/global/networks/n",
        "sourceRanges": ["10.1.0.5/16", "10.0.0.0/16"],
        "allowed": [{"IPProtocol": "TCP", "ports": ["80", "22-22"]}, {"IPProtocol": "17"}],
        "targetTags": ["b", "a"],
    }
    b = {
        "name": "x",
        "network": "global/networks/n",
        "direction": "INGRESS",
        "priority": 1000,
        "sourceRanges": ["10.0.0.0/16", "10.1.0.0/16"],
        "allowed": [
            {"IPProtocol": "udp", "ports": []},
            {"IPProtocol": "tcp", "ports": ["22", "80"]},
        ],
        "targetTags": ["a", "b"],
        "disabled": False,
        "logConfig": {"enable": True},
    }
    assert normalise_firewall(a, "p-12345") == normalise_firewall(b, "p-12345")
    assert fingerprint(normalise_firewall(a, "p-12345")) != fingerprint(
        normalise_firewall({**b, "priority": 999}, "p-12345")
    )
    rendered = render(spec())
    assert all(rendered.rows_by_name[f["name"]] for f in rendered.firewalls)


def rendered_default() -> RenderedFirewalls:
    return render(spec())


def test_judging_unmanaged_rules() -> None:
    rendered = rendered_default()
    internal = {
        "name": "default-allow-internal",
        "priority": 65534,
        "sourceRanges": ["10.128.0.0/9"],
        "allowed": [{"IPProtocol": "tcp", "ports": ["0-65535"]}, {"IPProtocol": "icmp"}],
    }
    shadowed = judge_firewall(internal, rendered)
    assert shadowed is not None and shadowed.severity is Severity.INFO
    assert shadowed.code == "UnmanagedRuleShadowed"

    above_isolation = {
        "name": "nomad-mesh",
        "priority": 100,
        "sourceTags": ["nomad-client"],
        "targetTags": ["nomad-client"],
        "allowed": [{"IPProtocol": "all"}],
    }
    widening = judge_firewall(above_isolation, rendered)
    assert widening is not None and widening.code == "UnmanagedWidening"
    assert widening.row == "NOMAD-ISO-1"

    assert judge_firewall({**above_isolation, "targetTags": ["web"]}, rendered) is None
    assert judge_firewall({**above_isolation, "disabled": True}, rendered) is None
    deny = {"name": "d", "sourceRanges": ["0.0.0.0/0"], "denied": [{"IPProtocol": "all"}]}
    assert judge_firewall(deny, rendered) is None
    # what our own allows already allow is no widening
    same = {
        "name": "dup",
        "sourceRanges": ["0.0.0.0/0"],
        "targetTags": ["k8s-node"],
        "allowed": [{"IPProtocol": "tcp", "ports": ["443"]}],
    }
    assert judge_firewall(same, rendered) is None


def test_a_hand_built_rule_set_renders() -> None:
    """The renderer needs no compiler: rules built by hand render too."""
    gcp = GcpSpec.model_validate(
        {"project": "proj-12345", "network": "n", "targetTags": {"nomadClients": "nomad"}}
    )
    nomad = Peer(PeerKind.NOMAD_CLIENTS, ("10.1.0.0/16",))
    rules = [
        Rule(
            Role.NOMAD_CLIENTS,
            d,
            Action.DENY,
            nomad,
            Protocol.ALL,
            None,
            frozenset({"NOMAD-ISO-1"}),
        )
        for d in Direction
    ] + [
        Rule(
            Role.NOMAD_CLIENTS,
            Direction.INGRESS,
            Action.ALLOW,
            Peer(PeerKind.SSH_RERUN, ("0.0.0.0/0",)),
            Protocol.TCP,
            PortRange(64535, 65535),
            frozenset({"NOMAD-IN-2"}),
        )
    ]
    rendered = render_firewalls(rules, gcp, OWNER)
    assert len(rendered.firewalls) == 5  # 2 denies, 1 allow, 2 floors
