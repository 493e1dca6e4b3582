"""Memory the operator freed goes back to the kernel: after many C-allocator blocks are freed
with a few survivors among them (what a mass converge leaves), the RSS falls to what is live."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

OPERATOR = Path(__file__).resolve().parents[2] / "operator"

PROGRAM = """
from server_hardening.runner import return_freed_memory

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

# Blocks over 512 bytes come from the C allocator, not Python's own; one in 50 survives, so
# nothing is freed at the top of the heap only.
kept, freed = [], []
for i in range(300_000):
    (kept if i % 50 == 0 else freed).append(bytes(600))
del freed
before = rss_mib()
print(return_freed_memory(), before, rss_mib())
"""


def test_freed_memory_goes_back_to_the_kernel() -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(OPERATOR)},
    ).stdout.split()
    trimmed, before, after = out[0] == "True", float(out[1]), float(out[2])
    if not trimmed:
        pytest.skip("not glibc: no malloc_trim")
    assert after < before - 100  # about 170 MiB freed; a few MiB survive
