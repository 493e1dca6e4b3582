"""The write gate: whether this process may act on the world now.

With leader election (``hardening run --leader-elect``) only the replica that holds the Lease
may write, and only until its renew deadline (see :mod:`server_hardening.election`). Every
path that calls an API on the operator's behalf asks the gate first:

- :class:`~server_hardening.targets.kubeapi.KubeApi` before every request that is not a read
  (NetworkPolicy repairs, the status, Events, OpenReports Reports): all the operator's own
  Kubernetes writes go through it; the Lease's own client is built without the gate;
- :class:`~server_hardening.targets.retry.Retrier` before every cloud call (AWS, GCP): a
  replica that does not lead has nothing to read there either.

The gate is closed by time, not by a thread remembering to close it: it holds the instant the
holder's right to act ends (its monotonic clock), and a check after that instant refuses,
even when the election's own thread is stuck in a call. kopf's own writes (its finalizer and
annotations) do not pass through here: kopf only starts once the Lease is held, and the process
exits the moment the lease is lost (see :mod:`server_hardening.elector`).

Why one per process (a module-level object, like the metrics registry): leadership belongs to
the process, and a write path added later is covered without being handed the gate. Without
leader election it is always open.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from server_hardening.targets.base import TransientTargetError


class NotLeading(TransientTargetError):  # noqa: N818 - a state, named as the logs say it
    """A call was refused: this replica does not hold the Lease (any more). A target error,
    so every caller already handles it (the pass stops; nothing is written)."""


class WriteGate:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._until = math.inf  # open: no election

    def elect(self) -> None:
        """Leader election is on: closed until the Lease is held."""
        with self._lock:
            self._until = -math.inf

    def open_until(self, until: float) -> None:
        """The Lease is held: writes may go on until ``until`` (this process's monotonic
        clock), the renew deadline after the last renewal sent."""
        with self._lock:
            self._until = until

    def close(self) -> None:
        """Stop every write now (leadership lost, or released)."""
        with self._lock:
            self._until = -math.inf

    def is_open(self) -> bool:
        with self._lock:
            until = self._until
        return self._clock() < until

    def check(self, what: str) -> None:
        """Raise :class:`NotLeading` when the gate is closed, naming the refused call."""
        if not self.is_open():
            raise NotLeading(
                f"{what}: refused, this replica does not hold the leader Lease", operation=what
            )


#: The process's gate (see the module doc for why there is one).
WRITES = WriteGate()
