"""TCP connect probes, run inside a network namespace (standard library only).

stdin: ``{"timeout": seconds, "targets": [[ip, port], ...]}``; stdout: ``[[ip, port, ok], ...]``
where ok is true when the TCP handshake completed. ``--source ADDR`` binds that address first.
"""

from __future__ import annotations

import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor


def connects(ip: str, port: int, timeout: float, source: str | None) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        try:
            sock.connect((ip, port))
        except OSError:
            return False
        return True


def main() -> int:
    source = sys.argv[sys.argv.index("--source") + 1] if "--source" in sys.argv else None
    request = json.load(sys.stdin)
    targets = [(str(ip), int(port)) for ip, port in request["targets"]]
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(
            pool.map(lambda t: connects(t[0], t[1], float(request["timeout"]), source), targets)
        )
    json.dump([[ip, port, ok] for (ip, port), ok in zip(targets, results, strict=True)], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
