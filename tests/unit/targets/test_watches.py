"""The NetworkPolicy and Service watches against a scripted API: listings delivered whole (page
by page), events in order, bookmarks only moving the version on, a 410 (as a status or as an
ERROR event) listing again, a failed connection waited out and the watch resumed from where it
was. The same watches run against the real API server in tests/e2e/test_watches.py."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import urllib3

from server_hardening.targets import watches
from server_hardening.targets.kubeapi import ApiError
from server_hardening.targets.watches import NETWORKPOLICIES, Versions, Watch

PATH = "/apis/networking.k8s.io/v1/networkpolicies"


def _item(namespace: str, name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name, "resourceVersion": version}}


def _event(type_: str, namespace: str, name: str, version: str) -> dict[str, Any]:
    return {"type": type_, "object": _item(namespace, name, version)}


@dataclass
class Sink:
    listings: list[tuple[str, str | None, Versions]] = field(default_factory=list)
    changes: list[tuple[str, str, str, str]] = field(default_factory=list)

    def listed(self, kind: str, namespace: str | None, versions: Versions) -> None:
        self.listings.append((kind, namespace, versions))

    def changed(self, kind: str, namespace: str, name: str, version: str) -> None:
        self.changes.append((kind, namespace, name, version))


@dataclass
class ScriptedApi:
    """Listings: one list of pages per listing, each page (items, its resourceVersion). Watch
    calls: one script each, a list of events, or an exception raised on opening, or a list
    that ends in an exception (the connection dropping mid-stream)."""

    listings: list[list[tuple[list[dict[str, Any]], str]]]
    watch_calls: list[Any]
    running: Watch | None = None
    gets: list[str] = field(default_factory=list)
    watched_from: list[str] = field(default_factory=list)

    def get(self, path: str) -> dict[str, Any]:
        self.gets.append(path)
        pages = self.listings[0]
        token = path.partition("&continue=")[2]
        index = int(token) if token else 0
        items, version = pages[index]
        if index + 1 == len(pages):
            self.listings.pop(0)
        meta = {"resourceVersion": version}
        if index + 1 < len(pages):
            meta["continue"] = str(index + 1)
        return {"items": items, "metadata": meta}

    def watch(self, path: str, *, since: str, timeout_seconds: int) -> Any:
        assert path == PATH
        self.watched_from.append(since)
        if not self.watch_calls:
            assert self.running is not None
            self.running.stopping.set()
            return Stream([])
        script = self.watch_calls.pop(0)
        if isinstance(script, Exception):
            raise script
        return Stream(script)


@dataclass
class Stream:
    script: list[Any]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for step in self.script:
            if isinstance(step, Exception):
                raise step
            yield step

    def close(self) -> None:
        return None


def _run(api: ScriptedApi, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    monkeypatch.setattr(watches, "BACKOFF_FIRST", 0.001)
    calls: list[tuple[str, str]] = []
    watch = Watch(
        api,  # type: ignore[arg-type]
        NETWORKPOLICIES,
        None,
        sink,
        record=lambda operation, outcome: calls.append((operation, outcome)),
        page_size=2,
    )
    api.running = watch
    watch.run()
    return calls


def test_a_listing_is_delivered_whole_then_the_events_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pages = [
        ([_item("a", "p1", "10"), _item("a", "p2", "11")], "20"),
        ([_item("b", "p3", "12")], "20"),
    ]
    events = [
        _event("ADDED", "a", "p4", "21"),
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "25"}}},
        _event("MODIFIED", "b", "p3", "26"),
        _event("DELETED", "a", "p1", "27"),
    ]
    api = ScriptedApi([pages], [events])
    sink = Sink()
    calls = _run(api, sink, monkeypatch)
    assert sink.listings == [
        ("networkpolicy", None, {"a": {"p1": "10", "p2": "11"}, "b": {"p3": "12"}})
    ]
    assert sink.changes == [
        ("networkpolicy", "a", "p4", "21"),
        ("networkpolicy", "b", "p3", "26"),
        ("networkpolicy", "a", "p1", ""),  # deleted
    ]
    assert api.gets == [f"{PATH}?limit=2", f"{PATH}?limit=2&continue=1"]
    # The listing's version, then on from the last event (the next call, which stops the test).
    assert api.watched_from == ["20", "27"]
    assert calls.count(("list_all_networkpolicies", "ok")) == 2


@pytest.mark.parametrize(
    "gone",
    [
        ApiError(410, "Gone", '{"message": "too old resource version"}'),
        [{"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}],
    ],
    ids=["status", "error-event"],
)
def test_a_version_gone_lists_again_and_the_listing_replaces_the_last(
    gone: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = [([_item("a", "p1", "10"), _item("a", "p2", "11")], "20")]
    second = [([_item("a", "p2", "11")], "40")]  # p1 deleted while the watch was down
    api = ScriptedApi([first, second], [gone])
    sink = Sink()
    _run(api, sink, monkeypatch)
    assert [versions for _, _, versions in sink.listings] == [
        {"a": {"p1": "10", "p2": "11"}},
        {"a": {"p2": "11"}},
    ]
    assert sink.changes == []
    assert api.watched_from == ["20", "40"]


def test_a_dropped_connection_is_waited_out_and_the_watch_goes_on_from_where_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dropped = urllib3.exceptions.ProtocolError("connection reset")
    api = ScriptedApi(
        [[([_item("a", "p1", "10")], "20")]],
        [
            [_event("MODIFIED", "a", "p1", "30"), dropped],  # mid-stream
            urllib3.exceptions.NewConnectionError(None, "refused"),  # type: ignore[arg-type]
            [_event("MODIFIED", "a", "p1", "31")],
        ],
    )
    sink = Sink()
    calls = _run(api, sink, monkeypatch)
    assert len(sink.listings) == 1  # no second listing: the version was still good
    assert [c[3] for c in sink.changes] == ["30", "31"]
    assert api.watched_from == ["20", "30", "30", "31"]
    assert ("watch_networkpolicies", "transient_error") in calls


def test_a_listing_cut_short_delivers_nothing_and_is_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A page that fails (here: the continue token expired) must not deliver half a listing:
    the objects not yet read would count as deleted."""
    pages = [
        ([_item("a", "p1", "10"), _item("a", "p2", "11")], "20"),
        ([_item("b", "p3", "12")], "20"),
    ]
    api = ScriptedApi([pages], [])
    original = api.get
    failed: list[str] = []

    def get(path: str) -> dict[str, Any]:
        if "continue" in path and not failed:
            failed.append(path)
            raise ApiError(410, "Gone", '{"message": "the continue token expired"}')
        return original(path)

    api.get = get  # type: ignore[method-assign]
    sink = Sink()
    _run(api, sink, monkeypatch)
    assert len(sink.listings) == 1
    assert sink.listings[0][2] == {"a": {"p1": "10", "p2": "11"}, "b": {"p3": "12"}}


def test_another_watch_error_is_waited_out_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 403 (the chart's RBAC not applied yet) or a 500: logged, waited out, tried again."""
    forbidden = ApiError(403, "Forbidden", '{"message": "cannot watch networkpolicies"}')
    api = ScriptedApi(
        [[([_item("a", "p1", "10")], "20")]], [forbidden, [_event("ADDED", "a", "p2", "21")]]
    )
    sink = Sink()
    calls = _run(api, sink, monkeypatch)
    assert sink.changes == [("networkpolicy", "a", "p2", "21")]
    assert ("watch_networkpolicies", "error") in calls
