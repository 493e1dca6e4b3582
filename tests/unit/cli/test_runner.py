"""``hardening run``'s process contract: its kopf identity, its exit codes, and what its health
endpoints say of a standby."""

from __future__ import annotations

import getpass
import threading
from pathlib import Path

import pytest

from server_hardening import runner


def test_the_pod_name_is_the_identity() -> None:
    assert runner.operator_identity({"POD_NAME": "sh-6f7d-abcde"}) == "sh-6f7d-abcde"
    assert runner.operator_identity({"POD_ID": "kopf-own", "POD_NAME": "sh-1"}) == "kopf-own"


def test_without_a_pod_name_no_user_name_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_passwd_entry() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", no_passwd_entry)
    monkeypatch.setattr(runner.socket, "gethostname", lambda: "node-1")
    identity = runner.operator_identity({})
    host, pid, started = identity.split("/")
    assert (host, pid) == ("node-1", str(runner.os.getpid()))
    assert started.isdigit()


def finished_thread() -> threading.Thread:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
    return thread


def test_a_requested_stop_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    stop.set()
    assert runner._exit_code(stop, finished_thread(), []) == 0
    assert "fatal" not in capsys.readouterr().err


def test_an_error_exits_non_zero_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    code = runner._exit_code(threading.Event(), finished_thread(), [RuntimeError("boom")])
    assert code == runner.EXIT_FATAL != 0
    assert "hardening run: fatal: kopf stopped on an error: RuntimeError: boom" in (
        capsys.readouterr().err
    )


def test_kopf_ending_unasked_is_fatal(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner._exit_code(threading.Event(), finished_thread(), []) == runner.EXIT_FATAL
    assert "no stop was requested" in capsys.readouterr().err


def test_a_stop_that_hangs_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    stop, release = threading.Event(), threading.Event()
    stop.set()
    hanging = threading.Thread(target=release.wait)
    hanging.start()
    try:
        assert runner._exit_code(stop, hanging, []) == runner.EXIT_STOP_TIMEOUT
        assert "did not stop" in capsys.readouterr().err
    finally:
        release.set()
        hanging.join()


# -- run_operator with kopf replaced: what the process reports when kopf fails or ends ---------


def run_with_kopf(monkeypatch: pytest.MonkeyPatch, operator: object) -> int:
    import kopf

    from server_hardening.cli import build_parser

    monkeypatch.setattr(kopf, "operator", operator)
    from server_hardening.targets.kubeapi import KubeApi
    from server_hardening.targets.kubeconfig import Credentials

    # A client that is never called (kopf is replaced): nothing listens there.
    api = KubeApi(Credentials(server="https://127.0.0.1:9"))
    monkeypatch.setattr(runner, "kube_api", lambda kubeconfig, identity="": api)
    args = build_parser().parse_args(
        ["run", "--metrics-host", "127.0.0.1", "--metrics-port", "0", "-n", "x"]
    )
    return runner.run_operator(args)


def test_a_fatal_kopf_error_exits_non_zero_with_the_reason_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def failing(**_: object) -> None:
        raise RuntimeError("the API server refused the watch")

    assert run_with_kopf(monkeypatch, failing) == runner.EXIT_FATAL
    err = capsys.readouterr().err
    assert "fatal: kopf stopped on an error: RuntimeError: the API server refused the watch" in err


def test_kopf_receives_an_explicit_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    async def recording(**kwargs: object) -> None:
        seen.update(kwargs)

    monkeypatch.setenv("POD_NAME", "server-hardening-abc12")
    assert run_with_kopf(monkeypatch, recording) == runner.EXIT_FATAL  # it ended unasked
    assert seen["identity"] == "server-hardening-abc12"


def test_the_allocator_is_tuned_before_the_operator_starts_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """glibc fixes the number of arenas when a second thread first allocates: a tuning after
    the threads started would come too late for them."""
    threads_when_tuned: list[set[str]] = []
    monkeypatch.setattr(
        runner.memory,
        "tune_allocator",
        lambda: threads_when_tuned.append({t.name for t in threading.enumerate()}) or True,
    )
    before = {t.name for t in threading.enumerate()}

    async def ending(**_: object) -> None:
        return None

    run_with_kopf(monkeypatch, ending)
    assert threads_when_tuned == [before]


def test_unusable_credentials_exit_non_zero_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from server_hardening.cli import build_parser

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: lab\n"
        "contexts: [{name: lab, context: {cluster: lab, user: lab}}]\n"
        "clusters: [{name: lab, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: lab, user: {auth-provider: {name: gcp}}}]\n"
    )
    args = build_parser().parse_args(
        ["run", "--kubeconfig", str(kubeconfig), "--metrics-port", "0", "-n", "x"]
    )
    assert runner.run_operator(args) == runner.EXIT_FATAL
    err = capsys.readouterr().err
    assert f"{kubeconfig}: users[lab].user.auth-provider: not supported" in err


def test_a_namespace_pattern_is_refused_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    """kopf would take ``team-*`` as a pattern; the operator's own watches watch named
    namespaces, so a pattern is refused before anything starts."""
    from server_hardening.cli import build_parser

    args = build_parser().parse_args(
        ["run", "--kubeconfig", "/nonexistent", "-n", "circleci", "-n", "team-*"]
    )
    assert runner.run_operator(args) == runner.EXIT_FATAL
    assert "--namespace 'team-*': a name, not a pattern" in capsys.readouterr().err


# -- leader election: kopf is standalone, timings are checked, a standby is ready -------------


def test_kopf_runs_standalone_whatever_the_election(monkeypatch: pytest.MonkeyPatch) -> None:
    """One mechanism decides who acts (the Lease): kopf's peering is never used."""
    seen: dict[str, object] = {}

    async def recording(**kwargs: object) -> None:
        seen.update(kwargs)

    run_with_kopf(monkeypatch, recording)
    assert seen["standalone"] is True
    assert "peering_name" not in seen


def test_lease_timings_that_cannot_keep_one_leader_exit_non_zero_naming_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from server_hardening.cli import build_parser
    from server_hardening.targets.kubeapi import KubeApi
    from server_hardening.targets.kubeconfig import Credentials

    api = KubeApi(Credentials(server="https://127.0.0.1:9"))  # never called
    monkeypatch.setattr(runner, "kube_api", lambda kubeconfig, identity="": api)
    args = build_parser().parse_args(
        ["run", "-n", "x", "--leader-elect", "--lease-duration", "10", "--renew-deadline", "10"]
    )
    assert runner.run_operator(args) == runner.EXIT_FATAL
    err = capsys.readouterr().err
    assert "renew deadline 10s must be shorter than the lease duration 10s" in err


class StandbyElection:
    """What Health reads of an election: its thread, last contact, error and holder."""

    def __init__(self, *, contact_age: float, thread_alive: bool = True) -> None:
        import time

        self.last_contact = time.monotonic() - contact_age
        self.answered = True
        self.error = "read Lease x/y: the API server is down"
        self.holder = "server-hardening-7d4b9c-aaaaa"
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.release.wait, daemon=True)
        self.thread.start()
        if not thread_alive:
            self.release.set()
            self.thread.join()


def test_a_standby_is_alive_and_ready_and_says_who_leads() -> None:
    election = StandbyElection(contact_age=1.0)
    health = runner.Health(None, watch_down_seconds=60, election=election)  # type: ignore[arg-type]
    try:
        why = "standby: the leader is server-hardening-7d4b9c-aaaaa"
        assert health.alive() == (True, why)
        assert health.ready() == (True, why)
    finally:
        election.release.set()


def test_a_standby_is_not_ready_before_it_has_read_the_lease() -> None:
    election = StandbyElection(contact_age=0.0)
    election.answered = False
    health = runner.Health(None, watch_down_seconds=60, election=election)  # type: ignore[arg-type]
    try:
        assert health.ready() == (False, "standby: the Lease has not been read yet")
    finally:
        election.release.set()


def test_a_standby_cut_off_from_the_api_server_is_not_alive() -> None:
    election = StandbyElection(contact_age=90.0)
    health = runner.Health(None, watch_down_seconds=60, election=election)  # type: ignore[arg-type]
    try:
        ok, why = health.alive()
        assert not ok
        assert "has not answered a Lease call for 90s" in why
        assert "the API server is down" in why
        assert health.ready()[0] is False
    finally:
        election.release.set()


def test_a_standby_whose_election_stopped_is_not_alive() -> None:
    election = StandbyElection(contact_age=0.0, thread_alive=False)
    health = runner.Health(None, watch_down_seconds=60, election=election)  # type: ignore[arg-type]
    assert health.alive() == (False, "the leader election has stopped")


def test_the_leader_is_judged_as_a_single_operator_is() -> None:
    """Once kopf runs (this replica leads), health is kopf's, not the election's."""
    election = StandbyElection(contact_age=0.0)
    health = runner.Health(None, watch_down_seconds=60, election=election)  # type: ignore[arg-type]
    health.kopf_thread = finished_thread()
    try:
        assert health.alive() == (False, "the kopf operator has stopped")
    finally:
        election.release.set()
