"""A real single-node Kubernetes cluster on this machine, for the field tier.

- etcd and kube-apiserver (``ControlPlane``, from scripts/testbin) in the root network namespace,
  listening on ``HOST_ADDR``, an address of a veth pair this module creates (never 0.0.0.0);
- kube-controller-manager and kube-scheduler (scripts/fieldbin) in the root namespace too;
- a node network namespace ``NODE_NETNS`` holding containerd (Debian; runc, CNI bridge +
  host-local from containernetworking-plugins), the kubelet, kube-proxy (iptables mode) and
  kube-router (firewall only: NetworkPolicies with iptables and ipset). Forwarding is on only
  inside it, and it has no default route: pods reach the API server, each other and the
  ``OUTSIDE_NETNS`` stand-ins, nothing else;
- an outside network namespace with addresses standing in for another Kubernetes node, a
  Nomad client, an external VM and the internet, routed to the pods through the node.

Everything it starts is a child process tracked by PID; ``stop()`` ends them, unmounts what
containerd and the kubelet mounted under this module's own directories, deletes both network
namespaces (their iptables rules and ipsets go with them) and restores the kernel settings the
kubelet changes. ``preflight()`` names the first requirement the machine does not meet.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from server_hardening_dev.controlplane import ControlPlane, TestBinaries

REPO = Path(__file__).resolve().parents[2]

NODE_NAME = "shf-node"
NODE_NETNS = "shf-node"
OUTSIDE_NETNS = "shf-outside"
HOST_IF, NODE_IF = "shf-host", "shf-up"  # root <-> node
OUT_NODE_IF, OUT_IF = "shf-out", "shf-ext"  # node <-> outside
HOST_ADDR, NODE_ADDR = "10.213.255.1", "10.213.255.2"  # a /30
POD_CIDR, BRIDGE, BRIDGE_ADDR = "10.213.0.0/24", "shf0", "10.213.0.1"
CLUSTER_CIDR = "10.213.0.0/20"
SERVICE_CIDR, KUBERNETES_SERVICE_IP = "10.213.128.0/24", "10.213.128.1"
OUTSIDE_GATEWAY = "10.213.100.1"
#: Stand-ins outside the cluster, all on the outside namespace's one interface.
OUTSIDE = {
    "other-node": "10.213.100.11",
    "nomad": "10.213.100.21",
    "vm": "10.213.100.31",
    "world": "10.213.100.41",
}
STATE_ROOT = Path("/var/lib/shfield")
RUN_ROOT = Path("/run/shfield")
#: Kernel settings the kubelet changes (it does not restore them).
KERNEL_SETTINGS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
CNI_BIN = Path("/usr/lib/cni")
CONTAINERD_SOCKET = RUN_ROOT / "containerd" / "containerd.sock"

T = TypeVar("T")
#: A TCP listener (python3 -c LISTENER PORT...): accepts and closes, for connect probes.
LISTENER = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(128)
    while True:
        c, _ = s.accept(); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),)).start()
"""


class NodeError(RuntimeError):
    pass


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (ApiException, OSError, subprocess.CalledProcessError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.3)
    raise NodeError(f"timed out waiting for {what}; last seen: {last!r}")


def run(*argv: str, netns: str | None = None, check: bool = True) -> str:
    command = list(argv)
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


# -- requirements ------------------------------------------------------------------------------

COMMANDS = {
    "podman": "podman", "mmdebstrap": "mmdebstrap", "containerd": "containerd", "ctr": "containerd",
    "runc": "runc", "ip": "iproute2", "nsenter": "util-linux", "iptables": "iptables",
    "ipset": "ipset", "busybox": "busybox-static", "conntrack": "conntrack", "go": "golang",
}  # fmt: skip


def preflight() -> str | None:  # noqa: PLR0911 - one return per requirement, in order
    """The first requirement this machine misses, as a sentence; None when all are met."""
    if sys.platform != "linux":
        return f"the field node needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "the field node needs root (network namespaces, containerd, the kubelet)"
    for command, package in COMMANDS.items():
        if shutil.which(command) is None:
            return f"command {command!r} not found (Debian package {package})"
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN / plugin).is_file():
            return f"CNI plugin {CNI_BIN / plugin} missing (containernetworking-plugins)"
    if (
        not Path("/sys/fs/cgroup/memory").is_dir()
        and not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    ):
        return "no memory cgroup controller under /sys/fs/cgroup"
    probe = "shf-preflight"
    try:
        run("ip", "netns", "add", probe)
    except NodeError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        run("ip", "link", "add", "shf-pf0", "type", "bridge", netns=probe)
        if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
            return "br_netfilter is missing (/proc/sys/net/bridge/bridge-nf-call-iptables)"
        run("ip", "link", "add", "shf-pf1", "type", "veth", "peer", "name", "shf-pf2", netns=probe)
        for table in ("filter", "nat"):
            run("iptables", "-t", table, "-N", "SHF-PREFLIGHT", netns=probe)
        run("ipset", "create", "shf-preflight", "hash:ip", netns=probe)
        run("iptables", "-A", "SHF-PREFLIGHT", "-m", "set", "--match-set", "shf-preflight",
            "src", "-j", "ACCEPT", netns=probe)  # fmt: skip
    except NodeError as exc:
        return f"a kernel feature the node needs is missing: {exc}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    owner = running_owner()
    if owner is not None:
        return f"another field node runs here (pid {owner}, {OWNER_FILE})"
    return None


OWNER_FILE = STATE_ROOT / "owner.json"


def running_owner() -> int | None:
    """The pid of a live process that runs a field node here, if any. A node whose owner died
    (a killed test run) is left over, and reclaimed by the next ``Node.start()``."""
    try:
        pid = int(json.loads(OWNER_FILE.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid if pid != os.getpid() else None


# -- binaries and images -----------------------------------------------------------------------


@dataclass(frozen=True)
class FieldBinaries:
    directory: Path

    def __getitem__(self, name: str) -> Path:
        return self.directory / name


def _script_output(script: str, progress: Any) -> Path:
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / script)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stderr is not None and proc.stdout is not None
    tail: list[str] = []
    for line in proc.stderr:
        progress.write(line)
        progress.flush()
        tail = [*tail[-30:], line]
    out = proc.stdout.read()
    if proc.wait() != 0:
        raise NodeError(f"scripts/{script} failed ({proc.returncode}):\n{''.join(tail)}")
    return Path(out.strip().splitlines()[-1])


def ensure_field_binaries(progress: Any = sys.stderr) -> FieldBinaries:
    return FieldBinaries(_script_output("fieldbin", progress))


def ensure_images(progress: Any = sys.stderr) -> Path:
    return _script_output("fieldimages", progress)


# -- processes ---------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None]:
    libc = ctypes.CDLL(None, use_errno=True)

    def set_death_signal() -> None:  # pragma: no cover - runs in the forked child
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))

    return set_death_signal


@dataclass
class Daemon:
    name: str
    argv: list[str]
    log: Path
    netns: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        argv = self.argv
        if self.netns:
            # nsenter enters the network namespace only (``ip netns exec`` would also give the
            # process a mount namespace of its own, hiding containerd's mounts from the kubelet).
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent(),  # noqa: PLW1509
            )  # fmt: skip
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- the node ----------------------------------------------------------------------------------


class Node:
    """The cluster above. ``start()`` returns once the node is Ready; ``stop()`` undoes it all."""

    def __init__(self, testbin: TestBinaries, fieldbin: FieldBinaries, images: Path) -> None:
        self.testbin = testbin
        self.fieldbin = fieldbin
        self.images = images
        self.control_plane: ControlPlane | None = None
        self.daemons: dict[str, Daemon] = {}
        self.logs = STATE_ROOT / "logs"
        self._kernel_settings: dict[str, str] = {}
        self._had_var_log_containers = Path("/var/log/containers").exists()
        self.timings: dict[str, float] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Node:
        started = time.monotonic()
        self._reclaim_leftovers()
        try:
            self._prepare_dirs()
            self._kernel_settings = {k: _read_sysctl(k) for k in KERNEL_SETTINGS}
            OWNER_FILE.write_text(
                json.dumps({"pid": os.getpid(), "kernel": self._kernel_settings}) + "\n"
            )
            self._network()
            self.control_plane = ControlPlane(
                self.testbin,
                address=HOST_ADDR,
                serving_ips=[KUBERNETES_SERVICE_IP],
                pods_get_tokens=True,
                extra_apiserver_args=[
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--enable-admission-plugins=NodeRestriction",
                ],
            ).start()
            self._containerd()
            self._import_images()
            self._kubelet()
            self._kube_proxy()
            self._controllers()
            wait_until("the node to be Ready", self._node_ready, 180)
            self._kube_router()  # it exits when the Node object does not exist yet
            wait_until("the default ServiceAccount and root CA", self._ready_for_pods, 120)
        except BaseException:
            self.stop()
            raise
        self.timings["node_up_seconds"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Undo everything, each step even when an earlier one failed (errors are re-raised
        once all steps ran)."""
        errors: list[str] = []

        def step(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:  # collected, and raised together below
                errors.append(f"{what}: {type(exc).__name__}: {exc}")

        for name in ("kube-router", "kube-proxy", "kube-scheduler", "kube-controller-manager",
                     "kubelet"):  # fmt: skip
            if name in self.daemons:
                step(f"stop {name}", self.daemons[name].stop)
        step("kill pod processes", self._kill_pods)
        if "containerd" in self.daemons:
            step("stop containerd", lambda: self.daemons["containerd"].stop(20))
        step("kill containerd shims", self._kill_shims)
        step("unmount", lambda: self._unmount_under(RUN_ROOT, STATE_ROOT))
        for netns in (OUTSIDE_NETNS, NODE_NETNS):
            run("ip", "netns", "del", netns, check=False)
        run("ip", "link", "del", HOST_IF, check=False)
        if self.control_plane is not None:
            step("stop the control plane", self.control_plane.stop)
            self.control_plane = None
        step("remove pod cgroups", self._remove_cgroups)
        for key, value in self._kernel_settings.items():
            _write_sysctl(key, value)
        step("remove /var/log/containers links", self._remove_container_log_links)
        keep = os.environ.get("SERVER_HARDENING_FIELD_KEEP_LOGS")
        if keep and self.logs.is_dir():
            step("keep logs", lambda: shutil.copytree(self.logs, Path(keep), dirs_exist_ok=True))
        shutil.rmtree(RUN_ROOT, ignore_errors=True)
        shutil.rmtree(STATE_ROOT, ignore_errors=True)
        self.daemons.clear()
        if errors:
            raise NodeError("cleanup incomplete: " + "; ".join(errors))

    # -- pieces -------------------------------------------------------------------------------

    def _reclaim_leftovers(self) -> None:
        """Undo a node whose owner died (SIGKILLed test run): its daemons died with it
        (PDEATHSIG), its pods, shims, mounts, namespaces and kernel settings did not."""
        try:
            leftover = json.loads(OWNER_FILE.read_text())
        except (OSError, ValueError):
            if not any(Path(f"/run/netns/{n}").exists() for n in (NODE_NETNS, OUTSIDE_NETNS)):
                return
            leftover = {}
        self._kernel_settings = dict(leftover.get("kernel") or {})
        self.stop()

    def _prepare_dirs(self) -> None:
        for leftover in (STATE_ROOT, RUN_ROOT):
            if leftover.exists():
                self._unmount_under(leftover)
                shutil.rmtree(leftover)
        for directory in (self.logs, STATE_ROOT / "kubelet", STATE_ROOT / "pod-logs",
                          STATE_ROOT / "containerd", STATE_ROOT / "cni" / "net.d",
                          STATE_ROOT / "pki", RUN_ROOT / "containerd"):  # fmt: skip
            directory.mkdir(parents=True, exist_ok=True)

    def _network(self) -> None:
        run("ip", "netns", "add", NODE_NETNS)
        run("ip", "netns", "add", OUTSIDE_NETNS)
        run("ip", "link", "set", "lo", "up", netns=NODE_NETNS)
        run("ip", "link", "set", "lo", "up", netns=OUTSIDE_NETNS)
        # root <-> node
        run("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NODE_IF,
            "netns", NODE_NETNS)  # fmt: skip
        run("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", HOST_IF)
        run("ip", "link", "set", HOST_IF, "up")
        run("ip", "addr", "add", f"{NODE_ADDR}/30", "dev", NODE_IF, netns=NODE_NETNS)
        run("ip", "link", "set", NODE_IF, "up", netns=NODE_NETNS)
        run("ip", "route", "add", CLUSTER_CIDR, "via", NODE_ADDR, "dev", HOST_IF)
        # node <-> outside
        run("ip", "link", "add", OUT_NODE_IF, "type", "veth", "peer", "name", OUT_IF,
            "netns", OUTSIDE_NETNS, netns=NODE_NETNS)  # fmt: skip
        run("ip", "addr", "add", f"{OUTSIDE_GATEWAY}/24", "dev", OUT_NODE_IF, netns=NODE_NETNS)
        run("ip", "link", "set", OUT_NODE_IF, "up", netns=NODE_NETNS)
        for address in OUTSIDE.values():
            run("ip", "addr", "add", f"{address}/24", "dev", OUT_IF, netns=OUTSIDE_NETNS)
        run("ip", "link", "set", OUT_IF, "up", netns=OUTSIDE_NETNS)
        run("ip", "route", "add", "default", "via", OUTSIDE_GATEWAY, netns=OUTSIDE_NETNS)
        # The bridge exists before the first pod so the node has its address from the start;
        # the CNI bridge plugin adopts it.
        run("ip", "link", "add", BRIDGE, "type", "bridge", netns=NODE_NETNS)
        run("ip", "addr", "add", f"{BRIDGE_ADDR}/24", "dev", BRIDGE, netns=NODE_NETNS)
        run("ip", "link", "set", BRIDGE, "up", netns=NODE_NETNS)
        for key, value in (("net.ipv4.ip_forward", "1"),
                           ("net.bridge.bridge-nf-call-iptables", "1")):  # fmt: skip
            run("sysctl", "-qw", f"{key}={value}", netns=NODE_NETNS)

    def _containerd(self) -> None:
        config = STATE_ROOT / "containerd.toml"
        pause = (self.images / "pause.name").read_text().strip()
        config.write_text(
            f"""version = 2
root = "{STATE_ROOT / "containerd"}"
state = "{RUN_ROOT / "containerd" / "state"}"
[grpc]
  address = "{CONTAINERD_SOCKET}"
[ttrpc]
  address = "{CONTAINERD_SOCKET}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This sandbox refuses oom_score_adj -998 for the pause container.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true  # pod network namespaces under our state dir
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{shutil.which("runc")}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{STATE_ROOT / "cni" / "net.d"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{STATE_ROOT / "containerd-opt"}"
"""
        )
        conflist = {
            "cniVersion": "1.0.0",
            "name": "shfield",
            "plugins": [
                {
                    "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local", "dataDir": str(STATE_ROOT / "cni" / "ipam"),
                        "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_ADDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
            ],
        }  # fmt: skip
        (STATE_ROOT / "cni" / "net.d" / "10-shfield.conflist").write_text(json.dumps(conflist))
        self.daemons["containerd"] = Daemon(
            "containerd", ["containerd", "--config", str(config)],
            self.logs / "containerd.log", netns=NODE_NETNS,
        ).start()  # fmt: skip
        wait_until("containerd", lambda: self.ctr("version") and True, 60)

    def ctr(self, *args: str) -> str:
        return run("ctr", "--address", str(CONTAINERD_SOCKET), "--namespace", "k8s.io", *args)

    def _import_images(self) -> None:
        started = time.monotonic()
        for archive in ("pause.tar", "base.tar", "server-hardening.tar"):
            self.ctr("images", "import", "--no-unpack=false", str(self.images / archive))
        self.timings["image_import_seconds"] = time.monotonic() - started

    def _kubelet(self) -> None:
        cp = self._cp
        kubeconfig = cp.client_cert_kubeconfig(f"system:node:{NODE_NAME}", ["system:nodes"])
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_ADDR,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(cp.ca_file)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "failSwapOn": False,
            "podLogsDir": str(STATE_ROOT / "pod-logs"),
            "resolvConf": "",
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "4s",
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "maxPods": 40,
        }
        path = STATE_ROOT / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        self.daemons["kubelet"] = Daemon(
            "kubelet",
            [str(self.fieldbin["kubelet"]), f"--config={path}", f"--kubeconfig={kubeconfig}",
             f"--root-dir={STATE_ROOT / 'kubelet'}", f"--cert-dir={STATE_ROOT / 'pki'}",
             f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_ADDR}", "--v=1"],
            self.logs / "kubelet.log", netns=NODE_NETNS,
        ).start()  # fmt: skip

    def _kube_proxy(self) -> None:
        admin = str(self._cp.admin_kubeconfig)
        proxy_config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": admin},
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_ADDR,
            "clusterCIDR": CLUSTER_CIDR,
            "healthzBindAddress": "",
            "metricsBindAddress": "127.0.0.1:10249",  # inside the node network namespace
            "oomScoreAdj": 0,
            # Leave the host's conntrack limits alone (they are not per network namespace).
            "conntrack": {"maxPerCore": 0, "min": 0},
            "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        }
        path = STATE_ROOT / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(proxy_config))
        self.daemons["kube-proxy"] = Daemon(
            "kube-proxy", [str(self.fieldbin["kube-proxy"]), f"--config={path}", "--v=1"],
            self.logs / "kube-proxy.log", netns=NODE_NETNS,
        ).start()  # fmt: skip

    def _kube_router(self) -> None:
        admin = str(self._cp.admin_kubeconfig)
        self.daemons["kube-router"] = Daemon(
            "kube-router",
            [str(self.fieldbin["kube-router"]), f"--kubeconfig={admin}", "--run-firewall",
             "--run-router=false", "--run-service-proxy=false", "--enable-cni=false",
             "--enable-ipv6=false", "--health-port=0", "--metrics-port=0",
             f"--hostname-override={NODE_NAME}", f"--service-cluster-ip-range={SERVICE_CIDR}",
             "--iptables-sync-period=1m", "--v=1"],
            self.logs / "kube-router.log", netns=NODE_NETNS,
        ).start()  # fmt: skip

    def _controllers(self) -> None:
        cp = self._cp
        admin = str(cp.admin_kubeconfig)
        pki = cp.root_dir / "pki"
        self.daemons["kube-controller-manager"] = Daemon(
            "kube-controller-manager",
            [str(self.fieldbin["kube-controller-manager"]), f"--kubeconfig={admin}",
             f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
             "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
             f"--service-account-private-key-file={pki / 'sa.key'}",
             f"--root-ca-file={cp.ca_file}", "--use-service-account-credentials=false",
             "--allocate-node-cidrs=true", f"--cluster-cidr={CLUSTER_CIDR}",
             "--node-cidr-mask-size=24", f"--service-cluster-ip-range={SERVICE_CIDR}",
             "--controllers=*,-bootstrapsigner,-tokencleaner", "--v=1"],
            self.logs / "kube-controller-manager.log",
        ).start()  # fmt: skip
        self.daemons["kube-scheduler"] = Daemon(
            "kube-scheduler",
            [str(self.fieldbin["kube-scheduler"]), f"--kubeconfig={admin}",
             f"--authentication-kubeconfig={admin}", f"--authorization-kubeconfig={admin}",
             "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0", "--v=1"],
            self.logs / "kube-scheduler.log",
        ).start()  # fmt: skip

    @property
    def _cp(self) -> ControlPlane:
        if self.control_plane is None:
            raise NodeError("the control plane is not running")
        return self.control_plane

    def api_client(self) -> Any:
        return self._cp.api_client()

    def _check_daemons(self) -> None:
        for daemon in self.daemons.values():
            if not daemon.running:
                raise NodeError(f"{daemon.name} exited:\n{daemon.tail()}")

    def _node_ready(self) -> bool:
        self._check_daemons()
        with self.api_client() as api:
            try:
                node = client.CoreV1Api(api).read_node(NODE_NAME)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    def _ready_for_pods(self) -> bool:
        self._check_daemons()
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            try:
                core.read_namespaced_service_account("default", "default")
                core.read_namespaced_config_map("kube-root-ca.crt", "default")
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
        return True

    # -- teardown helpers ---------------------------------------------------------------------

    def _kill_pods(self) -> None:
        """SIGKILL every process in the kubelet's pod cgroups (the kubelet is stopped by now)."""
        for top in Path("/sys/fs/cgroup").glob("*/kubepods*"):
            for directory, _, files in os.walk(top):  # tolerates directories vanishing
                if "cgroup.procs" not in files:
                    continue
                with contextlib.suppress(OSError):
                    for pid in Path(directory, "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)

    def _kill_shims(self) -> None:
        """containerd's shims outlive it by design; ours name our socket on their command line."""
        marker = str(CONTAINERD_SOCKET).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    @staticmethod
    def _unmount_under(*roots: Path) -> None:
        prefixes = tuple(str(r) for r in roots)
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefixes):
                mounts.append(point)
        for point in sorted(set(mounts), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    @staticmethod
    def _remove_cgroups() -> None:
        for top in Path("/sys/fs/cgroup").glob("*/kubepods*"):
            for directory, _, _ in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)

    def _remove_container_log_links(self) -> None:
        links = Path("/var/log/containers")
        if not links.is_dir():
            return
        for link in links.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(STATE_ROOT)):
                    link.unlink()
        if not self._had_var_log_containers:
            with contextlib.suppress(OSError):
                links.rmdir()

    # -- running things on the node -----------------------------------------------------------

    def serve_outside(self, ports: Sequence[int]) -> Daemon:
        """Listeners on ``ports`` at every outside stand-in address (stop the Daemon after)."""
        return Daemon(
            "outside-listener", [sys.executable, "-I", "-c", LISTENER, *map(str, ports)],
            self.logs / "outside-listener.log", netns=OUTSIDE_NETNS,
        ).start()  # fmt: skip

    def pod_pid(self, namespace: str, name: str) -> int:
        """The PID of a running pod's sandbox (its network namespace is the pod's)."""
        out = self.ctr("containers", "list", "--quiet")
        for container_id in out.split():
            try:
                info = json.loads(self.ctr("containers", "info", container_id))
            except NodeError:
                continue
            labels = info.get("Labels") or {}
            if (
                labels.get("io.cri-containerd.kind") == "sandbox"
                and labels.get("io.kubernetes.pod.namespace") == namespace
                and labels.get("io.kubernetes.pod.name") == name
            ):
                task = self.ctr("tasks", "list")
                for line in task.splitlines()[1:]:
                    fields = line.split()
                    if fields and fields[0] == container_id and fields[2] == "RUNNING":
                        return int(fields[1])
        raise NodeError(f"no running sandbox for pod {namespace}/{name}")


def _read_sysctl(key: str) -> str:
    return Path("/proc/sys", key).read_text().strip()


def _write_sysctl(key: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", key).write_text(value + "\n")


@contextlib.contextmanager
def running_node(progress: Any = sys.stderr) -> Iterator[Node]:
    from server_hardening_dev.controlplane import ensure_binaries

    testbin = ensure_binaries(progress=progress)
    fieldbin = ensure_field_binaries(progress)
    images = ensure_images(progress)
    with Node(testbin, fieldbin, images) as node:
        yield node


def exec_in_netns(pid_or_netns: int | str, argv: Sequence[str], timeout: float = 60) -> str:
    """Run ``argv`` (a host program) in a pod's (by PID) or a named network namespace."""
    target = (
        f"--net=/proc/{pid_or_netns}/ns/net"
        if isinstance(pid_or_netns, int)
        else f"--net=/run/netns/{pid_or_netns}"
    )
    proc = subprocess.run(
        ["nsenter", target, "--", *argv], capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise NodeError(f"{argv[0]} in {pid_or_netns} failed: {proc.stderr.strip()}")
    return proc.stdout
