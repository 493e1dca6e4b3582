"""One benchmark, one table: what the operator costs and how fast it repairs, on this machine.

    .venv/bin/python bench/run.py                       # everything, default sizes
    .venv/bin/python bench/run.py --sizes 1 100         # fewer Kubernetes sizes
    .venv/bin/python bench/run.py --only gcp aws plan   # some sections

Sections (each prints its rows as it finishes; the whole table again at the end):

- **kubernetes**: per size N, a fresh local control plane (etcd + kube-apiserver, as the e2e tier
  runs it), N namespaces each with 2 Services and a ServerHardening (driftCheckInterval 60s),
  and ``hardening run --all-namespaces`` as the chart's ServiceAccount (ClusterRole), logging as
  in production (no ``--verbose``). Figures: time to /readyz and to all Enforced; repair latency
  (a managed default-deny deleted, until it is back) p50/p99 over ``--repairs`` deletions
  spread over a drift interval, so some land while checks run; idle CPU (share of one core,
  from /proc utime+stime) and RSS (at the end, and its peak since start) over
  ``--idle-seconds``, the API writes the operator made in that window (audit log) and its log
  lines; the same after a SIGKILL and restart.
- **aws**: calls (at the HTTP proxy in front of moto) and wall time of converge, no-op and a
  small change, this operator against a one-call-per-rule reconciler (the way ACK and
  Crossplane reconcile security-group rules: a describe per group, then one Authorize, Revoke
  or Modify per rule), executed against the same moto for the same plan.
- **gcp**: a converge of the largest GCP example against the fake Compute API with operations
  that take 1 s and 10 s: the parallel write path against the sequential one (one write and
  its wait at a time, as the adapter did before).
- **plan**: ``hardening plan`` on each example (wall time of the command, median of 5).
- **failover**: two ``hardening run --leader-elect`` processes on a fresh control plane
  (the operator's default timings, or ``--lease-timings``); ``--failovers`` times: SIGKILL the
  leader, delete a managed NetworkPolicy at that moment, and time until the standby holds the
  Lease and until the policy is back; a replacement process then joins as the next standby,
  and the next kill comes 3 to 8 s (uniformly drawn) after it is ready. p50 and max, and each
  change's figures on stderr.
- **events-aws**, **events-gcp** (``bench/events.py``): the time from a cloud event's delivery
  to the repair (moto's EventBridge and SQS; the Pub/Sub emulator and the Compute fake), p50/p99
  over ``--event-changes``, beside the timer alone's, and the API calls a minute of an idle
  operator with events on and off.
- **expiry**: how long after its ``expires`` instant an exception is reported expired, with a
  10-minute timer (the scheduler checks at the instant), over 10 runs.

Figures, not assertions: nothing here fails on a slow machine. ``BENCH_OPERATOR_SRC`` (a
directory holding ``server_hardening``) runs another version of the operator under the same
Kubernetes bench, for a comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests"), str(ROOT / "dev"), str(ROOT / "bench")]

ROWS: list[tuple[str, str, str]] = []  # (section, what, figure)


SCRAPE_EVERY = 30.0  # seconds, the chart's ServiceMonitor interval


def row(section: str, what: str, figure: str) -> None:
    ROWS.append((section, what, figure))
    print(f"| {section} | {what} | {figure} |", flush=True)


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    load = os.getloadavg()
    return (
        f"{model or platform.processor()}, {cpus} CPUs, {mem}, Linux {platform.release()}, "
        f"Python {platform.python_version()}; load average at start {load[0]:.1f}"
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- kubernetes --------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory now, or with ``VmHWM`` its peak since the process started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def runtime_python() -> str:
    """A Python holding only the product's runtime requirements, as the image does. The dev venv
    also holds the official Kubernetes client (the tests use it), and kopf imports that whenever
    it is installed: about 48 MiB of RSS that the operator as shipped does not carry."""
    lock = ROOT / "requirements" / "runtime.txt"
    key = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    venv = Path.home() / ".cache" / "server-hardening" / f"bench-runtime-{key}"
    done = venv / ".installed"
    if not done.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "-r", lock],
            check=True,
        )
        done.touch()
    return str(venv / "bin" / "python")


def _kubernetes(sizes: list[int], idle_seconds: float, repairs: int) -> None:
    from e2e.harness import OperatorProcess
    from server_hardening_dev.controlplane import ControlPlane, ensure_binaries

    python = runtime_python()

    class Operator(OperatorProcess):
        """``hardening run --all-namespaces`` as deployed: INFO logging, not --verbose, and
        only the runtime requirements installed."""

        def start(self) -> Operator:
            args = [python, "-m", "server_hardening", "run", "--kubeconfig",
                    str(self.kubeconfig), "--metrics-host", "127.0.0.1", "--metrics-port",
                    str(self.port), "--all-namespaces"]  # fmt: skip
            self.env["PYTHONPATH"] = os.environ.get("BENCH_OPERATOR_SRC", str(ROOT / "operator"))
            self.log_path.write_bytes(b"")
            log = self.log_path.open("ab")
            self.started = time.monotonic()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            return self

        def pid(self) -> int:
            assert self.proc is not None
            return self.proc.pid

        def log_lines(self) -> int:
            return len(self.log_path.read_bytes().splitlines())

    binaries = ensure_binaries(progress=sys.stderr)
    for size in sizes:
        with ControlPlane(binaries) as cp:
            api = cp.api_client()
            try:
                _kubernetes_size(cp, api, Operator, size, idle_seconds, repairs)
            finally:
                api.close()


def _kubernetes_size(
    cp: Any, api: Any, operator_class: Any, size: int, idle_seconds: float, repairs: int
) -> None:
    from kubernetes import client

    from e2e.harness import GROUP, PLURAL, VERSION, custom, operator_identity, wait_for

    kubeconfig, account = operator_identity(cp, api, [])
    core = client.CoreV1Api(api)
    net = client.NetworkingV1Api(api)
    namespaces = [f"bench-{i:04d}" for i in range(size)]
    t = time.monotonic()
    for ns in namespaces:
        _installation(api, core, ns)
    row("kubernetes", f"{size} resources: created (namespace, 2 Services, resource)",
        f"{time.monotonic() - t:.1f} s")  # fmt: skip

    def enforced() -> int:
        items = custom(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        return sum(1 for i in items if (i.get("status") or {}).get("phase") == "Enforced")

    operator = operator_class(kubeconfig, []).start()
    try:
        for label in ("first start", "after a SIGKILL and restart"):
            started = operator.started
            wait_for("/readyz", lambda: operator.http("/readyz")[0] == 200, 900, 0.1)
            ready = time.monotonic() - started
            wait_for("all Enforced", lambda: enforced() == size or None, 900, 0.5)
            converged = time.monotonic() - started
            row("kubernetes", f"{size} resources, {label}: ready / all Enforced",
                f"{ready:.1f} s / {converged:.1f} s")  # fmt: skip
            _idle(cp, operator, account, size, label, idle_seconds)
            if label != "first start":
                # The first interval after a restart checks everything once more (see
                # docs/performance.md); the next one is the restarted operator's steady state.
                _idle(
                    cp, operator, account, size, "second interval after the restart", idle_seconds
                )
            if label == "first start":
                _repairs(net, namespaces, size, repairs)
                operator.kill()
                operator.start()
    finally:
        operator.stop()


def _installation(api: Any, core: Any, ns: str) -> None:
    from e2e.harness import GROUP, PLURAL, VERSION, custom

    core.create_namespace({"metadata": {"name": ns}})
    for name, port in (("circleci-proxy", 443), ("nomad-server-external", 4647)):
        core.create_namespaced_service(
            ns,
            {
                "metadata": {"name": name},
                "spec": {
                    # headless: 2,000 Services would not fit the test cluster's Service CIDR
                    "clusterIP": "None",
                    "selector": {"app": name},
                    "ports": [{"name": "p", "port": port, "targetPort": port}],
                },
            },
        )
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServerHardening",
        "metadata": {"name": "circleci", "namespace": ns},
        "spec": {
            "serverVersion": "4.3",
            "driftCheckInterval": "60s",
            "topology": {
                "kubernetesNodes": {"cidrs": ["10.0.0.0/16"]},
                "nomadClients": {"cidrs": ["10.1.0.0/16"]},
                "externalVMs": {"enabled": False},
            },
        },
    }
    custom(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def _idle(cp: Any, operator: Any, account: str, size: int, label: str, seconds: float) -> None:
    # Idle begins once the reconciles of the convergence (and of the watch events it caused)
    # have stopped for 10 s; how long that took is a figure too. The full drift checks go on
    # (one resource in thirty each 60 s interval): they are part of idle, not of the converge.
    began, last, count = time.monotonic(), time.monotonic(), -1.0
    while time.monotonic() - last < 10 and time.monotonic() - began < 600:
        now = _converging(operator)
        if now > count:
            count, last = now, time.monotonic()
        time.sleep(1)
    row("kubernetes", f"{size} resources, {label}: settled (no reconcile for 10 s) after",
        f"{last - began:.1f} s more")  # fmt: skip
    pid = operator.pid()
    audit_before = len(cp.audit_events())
    lines_before = operator.log_lines()
    calls_before = operator.metric("server_hardening_api_calls_total")
    cpu_before, wall_before = _cpu_seconds(pid), time.monotonic()
    # Prometheus scrapes as the chart's ServiceMonitor does (every 30 s): at 1,000 resources a
    # scrape is 21,000 series, part of what idle costs.
    scrapes = 0
    while (elapsed := time.monotonic() - wall_before) < seconds:
        if elapsed >= scrapes * SCRAPE_EVERY:
            operator.http("/metrics")
            scrapes += 1
        next_at = min(scrapes * SCRAPE_EVERY, seconds)
        time.sleep(max(0.0, next_at - (time.monotonic() - wall_before)))
    cpu = (_cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
    rss, peak = _rss_mib(pid), _rss_mib(pid, "VmHWM")
    writes = Counter(
        f"{e['verb']} {e['objectRef'].get('resource', '')}"
        + (f"/{e['objectRef']['subresource']}" if e["objectRef"].get("subresource") else "")
        for e in cp.audit_events()[audit_before:]
        if e["user"]["username"].endswith(f":{account}")
    )
    per_minute = 60.0 / seconds
    row("kubernetes", f"{size} resources, idle, {label}: scrapes of /metrics", str(scrapes))
    row("kubernetes", f"{size} resources, idle, {label}: CPU (one core) / RSS / peak RSS "
        "since start", f"{cpu * 100:.2f} % / {rss:.0f} MiB / {peak:.0f} MiB")  # fmt: skip
    status = sum(v for k, v in writes.items() if k.endswith("/status"))
    events = sum(v for k, v in writes.items() if k.split()[1] == "events")
    row("kubernetes", f"{size} resources, idle, {label}: status writes / events / all writes "
        "per minute", f"{status * per_minute:.0f} / {events * per_minute:.0f} / "
        f"{sum(writes.values()) * per_minute:.0f}")  # fmt: skip
    calls = operator.metric("server_hardening_api_calls_total") - calls_before
    lines = (operator.log_lines() - lines_before) * per_minute
    row("kubernetes", f"{size} resources, idle, {label}: adapter API calls / log lines per "
        "minute", f"{calls * per_minute:.0f} / {lines:.0f}")  # fmt: skip


def _converging(operator: Any) -> float:
    """Reconciles other than the timed full checks, from one scrape. A full check is counted
    just before its reconcile, so this dips for a moment while one runs: only a rise counts."""
    samples = operator.metrics()
    reconciles = sum(
        v for k, v in samples.items() if k.startswith("server_hardening_reconciles_total{")
    )
    return reconciles - samples.get('server_hardening_drift_checks_total{how="full"}', 0.0)


def _repairs(net: Any, namespaces: list[str], size: int, count: int) -> None:
    """Delete a managed policy at random moments over one drift interval, time its return."""
    from kubernetes.client.rest import ApiException

    rng = random.Random(16)  # noqa: S311
    picked = [rng.choice(namespaces) for _ in range(count)]
    spacing = 60.0 / max(count, 1)
    latencies = []
    for ns in picked:
        policies = net.list_namespaced_network_policy(ns).items
        victim = next(p for p in policies if "default-deny" in p.metadata.name)
        name, uid = victim.metadata.name, victim.metadata.uid
        began = time.monotonic()
        net.delete_namespaced_network_policy(name, ns)
        while True:
            try:
                back = net.read_namespaced_network_policy(name, ns)
                if back.metadata.uid != uid:
                    break
            except ApiException as exc:
                if exc.status != 404:
                    raise
            time.sleep(0.005)
        latencies.append(time.monotonic() - began)
        time.sleep(max(0.0, spacing - (time.monotonic() - began)) * rng.random() * 2)
    row("kubernetes", f"{size} resources: repair latency p50 / p99 / max ({count} deletions "
        "over a drift interval)", f"{pct(latencies, 0.5) * 1000:.0f} / "
        f"{pct(latencies, 0.99) * 1000:.0f} / {max(latencies) * 1000:.0f} ms")  # fmt: skip


# -- aws ---------------------------------------------------------------------------------------


def _aws() -> None:
    from aws_requests import changed

    from adapters.aws.double import MotoDouble
    from adapters.aws.world import make_world, many_groups, reconcile

    double = MotoDouble()
    try:
        for groups, per_group in ((4, 50), (40, 50)):
            label = f"{groups} groups x {per_group} rules"
            ours = _aws_ours(double, groups, per_group, make_world, many_groups, reconcile, changed)
            base = _aws_baseline(double, groups, per_group, make_world, many_groups, changed)
            for scenario in ("converge", "no-op", "change"):
                (calls, wall), (bcalls, bwall) = ours[scenario], base[scenario]
                row("aws", f"{label}, {scenario}: calls / wall, this operator vs one call per "
                    "rule", f"{calls} / {wall:.2f} s vs {bcalls} / {bwall:.2f} s")  # fmt: skip
    finally:
        double.stop()


def _aws_ours(double, groups, per_group, make_world, many_groups, reconcile, changed):  # type: ignore[no-untyped-def]
    world = make_world(double, keep_default_egress=False)
    rendered = many_groups(world.ec2, world.vpc, groups, per_group)
    out = {}
    for scenario, target in (
        ("converge", world.target(rendered)),
        ("no-op", world.target(rendered)),
        ("change", world.target(changed(rendered))),
    ):
        double.proxy.reset()
        began = time.monotonic()
        reconcile(target)
        out[scenario] = (sum(double.counts().values()), time.monotonic() - began)
    return out


def _aws_baseline(double, groups, per_group, make_world, many_groups, changed):  # type: ignore[no-untyped-def]
    """A reconciler that writes one rule per call: a describe of each group's rules, then one
    Authorize per missing rule, one Modify per rule whose description changed, one Revoke per
    rule to go. The plan is this project's (the same decisions); only the calls differ."""
    from server_hardening.reconcile import plan_target
    from server_hardening.renderers.aws import permissions

    world = make_world(double, keep_default_egress=False)
    rendered = many_groups(world.ec2, world.vpc, groups, per_group)
    ec2 = world.ec2
    out = {}
    for scenario, wanted in (("converge", rendered), ("no-op", rendered),
                             ("change", changed(rendered))):  # fmt: skip
        target = world.target(wanted)
        plan = plan_target(target, target.observe())
        double.proxy.reset()
        began = time.monotonic()
        for group in wanted.group_ids:
            ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": [group]}])
        for item in plan.create:
            atom = item.payload
            call = (ec2.authorize_security_group_ingress if atom.direction.value == "ingress"
                    else ec2.authorize_security_group_egress)  # fmt: skip
            call(
                GroupId=atom.group_id,
                IpPermissions=permissions([atom]),
                # marked as this operator marks them, so the next pass plans the same way
                TagSpecifications=[{"ResourceType": "security-group-rule", "Tags": target._tags()}],
            )
        for change in plan.update:
            atom = change.desired.payload
            ec2.modify_security_group_rules(
                GroupId=atom.group_id,
                SecurityGroupRules=[{
                    "SecurityGroupRuleId": change.observed.native_id,
                    "SecurityGroupRule": {"IpProtocol": atom.protocol, "FromPort": atom.from_port,
                                          "ToPort": atom.to_port, "CidrIpv4": atom.peer,
                                          "Description": atom.description},
                }],
            )  # fmt: skip
        for stale in plan.delete:
            atom = stale.payload
            call = (ec2.revoke_security_group_ingress if atom.direction.value == "ingress"
                    else ec2.revoke_security_group_egress)  # fmt: skip
            call(GroupId=atom.group_id, SecurityGroupRuleIds=[stale.native_id])
        out[scenario] = (sum(double.counts().values()), time.monotonic() - began)
    return out


# -- gcp ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _fake(latency: float) -> Iterator[Any]:
    import yaml

    from fakes.gcp_compute import FakeCompute

    gcp = yaml.safe_load((ROOT / "examples" / "gcp-v3.yaml").read_text())["spec"]["gcp"]
    # The figures measure operations that take ``latency``: without the fake's unasked
    # refusals, whose backoffs would make the runs incomparable.
    with FakeCompute(
        operation_seconds=latency,
        firewall_quota=500,
        chaos_rate=0,
        networks=((gcp["project"], gcp["network"]),),
    ) as fake:
        yield fake


def _gcp(latencies: list[float], sequential_up_to: float) -> None:
    import yaml
    from google.auth.credentials import AnonymousCredentials

    from server_hardening.compiler import compile_intent
    from server_hardening.drift import Plan
    from server_hardening.model import ResourceRef, parse_spec
    from server_hardening.reconcile import plan_target
    from server_hardening.targets.gcp import GcpTarget, make_clients

    body = yaml.safe_load((ROOT / "examples" / "gcp-v3.yaml").read_text())
    owner = ResourceRef("circleci-server", "circleci", "bench-uid")

    def target_for(fake: Any) -> GcpTarget:
        raw = copy.deepcopy(body["spec"])
        raw["gcp"]["endpoint"] = fake.url
        spec = parse_spec(raw)
        assert spec.gcp is not None
        return GcpTarget.from_rules(
            compile_intent(spec).cloud_rules("gcp"),
            spec.gcp,
            owner,
            client_factory=lambda g: make_clients(g, AnonymousCredentials()),  # type: ignore
        )

    for latency in latencies:
        with _fake(latency) as fake:
            target = target_for(fake)
            plan = plan_target(target, target.observe())
            began = time.monotonic()
            result = target.apply(plan)
            parallel = time.monotonic() - began
            assert not result.errors, result.errors
            waits = len(fake.calls("globalOperations.wait"))
        figure = f"{parallel:.1f} s ({waits} waits, at most {fake.max_outstanding} at once)"
        if latency <= sequential_up_to:
            with _fake(latency) as fake:
                target = target_for(fake)
                plan = plan_target(target, target.observe())
                began = time.monotonic()
                for item in plan.create:  # one write and its wait at a time
                    target.apply(Plan(target="gcp", create=(item,)))
                sequential = time.monotonic() - began
            figure += f" vs {sequential:.1f} s sequential"
        else:
            figure += f" vs sequential not run (about {len(plan.create) * latency:.0f} s)"
        row("gcp", f"converge {len(plan.create)} rules, operations of {latency:g} s: parallel vs "
            "sequential", figure)  # fmt: skip


# -- plan --------------------------------------------------------------------------------------


def _examined(target: Any, intent: Any) -> tuple[float, float, float, int, Any]:
    """An examination in parts: reading the machines, the guide's checks on them (``verify``),
    the findings; the seconds of each, how many checks, the evaluator."""
    from server_hardening.verification import guide_checks, verify

    began = time.monotonic()
    machines = target.observe_machines()
    read = time.monotonic() - began
    began = time.monotonic()
    effective = target.policy.effective(machines)
    checks = guide_checks(intent)
    verify(checks, [effective])
    judged = time.monotonic() - began
    began = time.monotonic()
    effective.findings(checks)
    return read, judged, time.monotonic() - began, len(checks), effective


def _verify(groups: int = 100, per_group: int = 50, instances: int = 500) -> None:
    """``hardening verify``'s pass on moto: every role's machines, every group on them, their
    ACLs, the guide's checks on each machine signature. Wall time and API calls."""
    from adapters.aws.double import MotoDouble
    from adapters.aws.test_machines import SUBNETS, spec_for
    from adapters.aws.world import OWNER, make_world
    from server_hardening.compiler import compile_intent
    from server_hardening.model import Mode
    from server_hardening.reconcile import run_target
    from server_hardening.rules import Role
    from server_hardening.targets.aws import AwsTarget

    double = MotoDouble()
    try:
        world = make_world(double)
        ec2 = world.ec2
        extra = []
        for g in range(groups):
            group = ec2.create_security_group(
                GroupName=f"extra-{g}", Description="bench", VpcId=world.vpc
            )["GroupId"]
            ec2.authorize_security_group_ingress(
                GroupId=group,
                IpPermissions=[
                    {"IpProtocol": "tcp", "FromPort": 10000 + i, "ToPort": 10000 + i,
                     "IpRanges": [{"CidrIp": f"192.0.2.{i}/32"}]}
                    for i in range(per_group)
                ],
            )  # fmt: skip
            extra.append(group)
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        shares = {Role.KUBERNETES_NODES: 0.2, Role.NOMAD_CLIENTS: 0.6, Role.EXTERNAL_VMS: 0.2}
        made = 0
        for role, cidr in SUBNETS.items():
            subnet = ec2.create_subnet(VpcId=world.vpc, CidrBlock=cidr)["Subnet"]["SubnetId"]
            count = int(instances * shares[role])
            for i in range(count):
                two = [extra[(made + i) % groups], extra[(made + i + 1) % groups]]
                ec2.run_instances(
                    ImageId=ami, MinCount=1, MaxCount=1, SubnetId=subnet,
                    SecurityGroupIds=[world.groups[role], *two],
                )  # fmt: skip
            made += count
        spec = spec_for(world)
        assert spec.aws is not None
        intent = compile_intent(spec)
        target = AwsTarget.from_intent(intent, spec.aws, OWNER, client=ec2, sleep=lambda _s: None)
        double.proxy.reset()
        began = time.monotonic()
        report = run_target(
            "aws",
            lambda: target,
            spec.model_copy(update={"mode": Mode.AUDIT}),
            0,
            [],
            intent=intent,
        )
        wall = time.monotonic() - began
        calls = sum(double.counts().values())
        rows = len(report.rows or ())
        row("verify", f"AWS: {groups} groups x {per_group} rules on {made} instances "
            f"({rows} row verdicts): wall / API calls", f"{wall:.2f} s / {calls}")  # fmt: skip
        # The same pass in parts: reading the machines (moto's answers) and judging them.
        read, judged, found, checks, _ = _examined(target, intent)
        judged += found
        row("verify", f"AWS: the same, reading the machines / evaluating them ({checks} "
            "checks)", f"{read:.2f} s / {judged:.2f} s")  # fmt: skip
    finally:
        double.stop()


def _seed_gcp_verify(fake: Any, gcp: dict[str, Any], rules: int, instances: int) -> int:
    """GKE's ``-vms`` rule, ``rules`` more firewalls (by tag, service account and range, some
    denying, some egress) and ``instances`` instances, each with its role's tag and two of 100
    team tags, in the example's subnets of a default network: how many instances."""
    project, tags = gcp["project"], gcp["targetTags"]
    at, sa = f"global/networks/{gcp['network']}", f"nomad@{project}.iam.gserviceaccount.com"
    fake.seed(project, {
        "name": "gke-circleci-1a2b3c4d-vms", "network": at, "priority": 1000,
        "targetTags": [tags["kubernetesNodes"]], "sourceRanges": ["10.128.0.0/9"],
        "allowed": [{"IPProtocol": "tcp", "ports": ["1-65535"]},
                    {"IPProtocol": "udp", "ports": ["1-65535"]}, {"IPProtocol": "icmp"}],
    })  # fmt: skip
    for k in range(rules):
        ports = [str(10000 + k), f"{20000 + k}-{20010 + k}"]
        rule: dict[str, Any] = {
            "name": f"team-{k}", "network": at, "priority": 900 + k % 3 * 100,
            "targetTags": [f"team-{k}"], "allowed": [{"IPProtocol": "tcp", "ports": ports}],
        }  # fmt: skip
        if k % 3 == 0:
            rule["sourceRanges"] = [f"192.0.2.{k}/32", "10.132.0.0/16"]
        elif k % 3 == 1:
            rule["sourceTags"] = [f"team-{(k + 1) % rules}"]
        else:
            rule["sourceServiceAccounts"] = [sa]
            rule["targetServiceAccounts"] = [f"team-{k}@{project}.iam.gserviceaccount.com"]
            del rule["targetTags"]
        if k % 10 == 5:
            del rule["allowed"]
            rule["denied"] = [{"IPProtocol": "tcp", "ports": ["22"]}]
        if k % 10 == 7:
            rule = {"name": f"team-{k}", "network": at, "direction": "EGRESS",
                    "targetTags": [f"team-{k}"], "destinationRanges": ["10.128.0.0/9"],
                    "denied": [{"IPProtocol": "tcp", "ports": ["4647"]}]}  # fmt: skip
        fake.seed(project, rule)
    shares = {"kubernetesNodes": (0.2, "10.128"), "nomadClients": (0.6, "10.132"),
              "externalVMs": (0.2, "10.136")}  # fmt: skip
    made = 0
    for role, (share, base) in shares.items():
        for i in range(int(instances * share)):
            j = made + i
            accounts = [sa] if role == "nomadClients" else []
            if j % 4 == 0 and role != "nomadClients":
                accounts = [f"team-{j % rules}@{project}.iam.gserviceaccount.com"]
            fake.seed_instance(
                project, f"{tags[role]}-{i}", network=gcp["network"],
                ip=f"{base}.{i // 250}.{i % 250 + 2}", service_accounts=accounts,
                tags=[tags[role], f"team-{j % 100}", f"team-{(j + 1) % 100}"],
            )  # fmt: skip
        made += int(instances * share)
    return made


def _verify_gcp(rules: int = 100, instances: int = 500) -> None:
    """The same pass on the GCP fake: the example's rules converged, then what
    :func:`_seed_gcp_verify` adds (about 100 distinct signatures per role)."""
    import yaml
    from google.auth.credentials import AnonymousCredentials

    from server_hardening.compiler import compile_intent
    from server_hardening.model import Mode, ResourceRef, parse_spec
    from server_hardening.reconcile import plan_target, run_target
    from server_hardening.targets.gcp import GcpTarget, make_clients

    body = yaml.safe_load((ROOT / "examples" / "gcp-v3.yaml").read_text())["spec"]
    with _fake(0.0) as fake:
        body["gcp"]["endpoint"] = fake.url
        spec = parse_spec(body)
        assert spec.gcp is not None
        intent = compile_intent(spec)
        target = GcpTarget.from_rules(
            intent.cloud_rules("gcp"), spec.gcp, ResourceRef("circleci-server", "circleci", "b"),
            client_factory=lambda g: make_clients(g, AnonymousCredentials()),  # type: ignore
        )  # fmt: skip
        assert not target.apply(plan_target(target, target.observe())).errors
        made = _seed_gcp_verify(fake, body["gcp"], rules, instances)
        fake.reset_log()
        began = time.monotonic()
        report = run_target(
            "gcp", lambda: target, spec.model_copy(update={"mode": Mode.AUDIT}), 0, [],
            intent=intent,
        )  # fmt: skip
        wall = time.monotonic() - began
        calls, rows = len(fake.calls()), len(report.rows or ())
        row("verify", f"GCP: {rules} more firewalls and GKE's -vms rule on {made} instances "
            f"({rows} row verdicts): wall / API calls", f"{wall:.2f} s / {calls}")  # fmt: skip
        read, judged, found, checks, effective = _examined(target, intent)
        sigs = sum(len(s) for s in effective.signatures.values())
        row("verify", f"GCP: the same, reading the machines / evaluating the {checks} checks "
            f"on {sigs} signatures / the findings between the roles",
            f"{read:.2f} s / {judged:.2f} s / {found:.2f} s")  # fmt: skip


#: ``hardening run``'s flags for the Lease timings, in ``--lease-timings``' order.
TIMING_FLAGS = ("lease-duration", "renew-deadline", "retry-period")
#: Seconds between a new standby being ready and the next kill: drawn uniformly, a span longer
#: than a standby's longest wait between reads (4.4 s with client-go's timings).
KILL_AFTER_READY = (3.0, 8.0)


def _failover(changes: int, timings: list[int] | None) -> None:
    from kubernetes import client

    from e2e.harness import GROUP, PLURAL, VERSION, LeaderReplicas, custom, resource, wait_for
    from server_hardening_dev.controlplane import ControlPlane, ensure_binaries

    ns = "bench-failover"
    names = [f"r{i}" for i in range(changes + 2)]
    with ControlPlane(ensure_binaries(progress=sys.stderr)) as cp:
        api = cp.api_client()
        net = client.NetworkingV1Api(api)
        election = (
            []
            if timings is None
            else [f"--{flag}={value}" for flag, value in zip(TIMING_FLAGS, timings, strict=True)]
        )
        replicas = LeaderReplicas(cp, api, ns, names, election)
        custom(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, resource(ns))

        def uid(name: str) -> str | None:
            items = net.list_namespaced_network_policy(ns).items
            return next((p.metadata.uid for p in items if p.metadata.name == name), None)

        try:
            running = [replicas.start(names[0])]
            running.append(replicas.start(names[1]))
            policy = wait_for(
                "the policies",
                lambda: sorted(
                    p.metadata.name for p in net.list_namespaced_network_policy(ns).items
                ),
                120,
            )[0]
            held, repaired = [], []
            for turn in range(changes):
                # A new standby is ready right after its first read of the Lease: killing then
                # would hide how late a standby sees the last renewal. The kill lands at a
                # random moment of the renewals and the standby's reads instead.
                time.sleep(random.uniform(*KILL_AFTER_READY))  # noqa: S311 - a moment, not a secret
                leader = replicas.leader()
                old = uid(policy)
                victim = next(p for p in running if p.env.get("POD_NAME") == leader)
                t0 = time.monotonic()
                victim.kill()
                net.delete_namespaced_network_policy(policy, ns)
                wait_for(
                    "a new leader",
                    lambda leader=leader: replicas.leader() not in ("", leader),
                    60,
                    0.05,
                )
                held.append(time.monotonic() - t0)
                wait_for("the repair", lambda old=old: uid(policy) not in (None, old), 60, 0.05)
                repaired.append(time.monotonic() - t0)
                running.remove(victim)
                running.append(replicas.start(names[turn + 2]))
        finally:
            replicas.stop_all()
            api.close()
    setting = "defaults" if timings is None else "/".join(map(str, timings))
    for what, values in (("SIGKILL -> the standby holds the Lease", held),
                         ("SIGKILL -> the deleted policy repaired", repaired)):  # fmt: skip
        row("failover", f"{what} ({changes} leader changes, timings {setting}): p50 / max",
            f"{statistics.median(values):.2f} s / {max(values):.2f} s")  # fmt: skip
    print("failover per change (held, repaired):",
          [(round(h, 2), round(r, 2)) for h, r in zip(held, repaired, strict=True)],
          file=sys.stderr)  # fmt: skip


def _plan() -> None:
    for example in sorted((ROOT / "examples").glob("*.yaml"), key=lambda p: -p.stat().st_size):
        walls = []
        for _ in range(5):
            began = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "server_hardening", "plan", "-f", str(example)],
                check=True,
                capture_output=True,
                env={**os.environ, "PYTHONPATH": str(ROOT / "operator")},
            )
            walls.append(time.monotonic() - began)
        row("plan", f"hardening plan -f examples/{example.name} ({example.stat().st_size} B)",
            f"{statistics.median(walls):.2f} s (median of 5, process start included)")  # fmt: skip


def _events(provider: str, args: argparse.Namespace) -> None:
    import events

    run = events.aws if provider == "aws" else events.gcp
    run(row, args.event_changes, args.timer_interval, args.events_idle_seconds)


def _expiry() -> None:
    import events

    events.expiry(row, 10)


SECTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "plan": lambda a: _plan(),
    "events-aws": lambda a: _events("aws", a),
    "events-gcp": lambda a: _events("gcp", a),
    "expiry": lambda a: _expiry(),
    "gcp": lambda a: _gcp(a.gcp_latencies, a.sequential_up_to),
    "aws": lambda a: _aws(),
    "kubernetes": lambda a: _kubernetes(a.sizes, a.idle_seconds, a.repairs),
    "verify": lambda a: (_verify(), _verify_gcp()),
    "failover": lambda a: _failover(a.failovers, a.lease_timings),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--repairs", type=int, default=20)
    parser.add_argument("--failovers", type=int, default=10)
    parser.add_argument(
        "--lease-timings",
        type=int,
        nargs=3,
        metavar=("LEASE", "RENEW", "RETRY"),
        default=None,
        help="the failover section's Lease timings in seconds (default: the operator's)",
    )
    parser.add_argument("--gcp-latencies", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument(
        "--sequential-up-to",
        type=float,
        default=10.0,
        help="run the sequential GCP converge only for operation latencies up to this",
    )
    parser.add_argument("--event-changes", type=int, default=20, help="changes per provider")
    parser.add_argument(
        "--timer-interval", type=float, default=10.0, help="the timer-alone runs' interval (s)"
    )
    parser.add_argument(
        "--events-idle-seconds", type=float, default=120.0, help="two 60 s timer intervals"
    )
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"machine: {machine()}\n")
    print("| section | what | figure |\n|---|---|---|", flush=True)
    for name, section in SECTIONS.items():
        if name in args.only:
            section(args)
    print("\n| section | what | figure |\n|---|---|---|")
    for section, what, figure in ROWS:
        print(f"| {section} | {what} | {figure} |")


if __name__ == "__main__":
    main()
