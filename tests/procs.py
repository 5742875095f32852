"""Helpers for the fault tests: kill a real subprocess at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float,
              what: str) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (polled every 5 ms); fail the test if the
    process ends first or ``timeout`` seconds pass. The process is killed and reaped either way."""
    try:
        deadline = time.time() + timeout
        while not ready():
            assert proc.poll() is None, f"{what} ended before the kill: {proc.stderr.read()}"
            assert time.time() < deadline, f"{what}: not ready to be killed in {timeout} s"
            time.sleep(0.005)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
