"""Shared helpers for the cmwq test suite."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import cmwq


def burn(seconds):
    """Spins in pure Python (holding the GIL between switches) for `seconds` of this thread's
    CPU time, so waiting for the GIL does not shorten the burn."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


class Timeline:
    """Thread-safe list of (time, who, what) events."""

    def __init__(self):
        self._lock = threading.Lock()
        self.events = []

    def mark(self, who, what):
        with self._lock:
            self.events.append((time.monotonic(), who, what))

    def at(self, who, what):
        for t, w, e in self.events:
            if w == who and e == what:
                return t
        raise AssertionError(f"no event {who} {what} in {self.order()}")

    def order(self):
        return [f"{w} {e}" for _, w, e in sorted(self.events)]


@pytest.fixture
def timeline():
    return Timeline()


@pytest.fixture(scope="session")
def one_cpu_runtime():
    """An isolated runtime with one CPU; the CPU-hog threshold is raised so a burning item is
    not taken for a hog (which would let the next item start for that reason instead)."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    return cmwq.Runtime(cpus=[cpu], cpu_hog_threshold=30.0, detector="explicit")


def _default_sigint():
    # A shell starts background jobs with SIGINT ignored, and an interpreter that starts with
    # it ignored installs no KeyboardInterrupt handler: the Ctrl-C tests would then test
    # nothing, or fail, depending on how the suite was launched.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_script(source, timeout=60, env=None):
    """Runs `source` in a fresh interpreter, with SIGINT's default disposition whatever ours
    is; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        preexec_fn=_default_sigint,
    )


@pytest.fixture
def script():
    return run_script
