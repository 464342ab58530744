"""cmwq: the Linux kernel's Concurrency Managed Workqueue for Python.

A :class:`Workqueue` is a :class:`concurrent.futures.Executor` backed by cmwq worker pools:
per-CPU pools keep just enough threads running, starting another worker only when the running
one blocks, and each workqueue is a cheap named domain carrying policy (high priority,
CPU-intensive, unbound, ordered, a concurrency limit).

    import cmwq

    with cmwq.Workqueue("thumbnails", max_active=4) as wq:
        sizes = list(wq.map(len, ["a", "bb", "ccc"]))

    async def handler():
        return await cmwq.system_wq.run(read_file, "data.bin")

Futures are real :class:`concurrent.futures.Future` objects, so ``concurrent.futures.wait``,
``as_completed`` and ``asyncio.wrap_future`` work. ``loop.run_in_executor(wq, fn, *args)``
works too; ``loop.set_default_executor`` only accepts ``ThreadPoolExecutor`` since Python
3.11, so use :meth:`Workqueue.run` from coroutines instead.

Until automatic sleep detection is active, wrap blocking calls made from work items in
:func:`blocking` (``cmwq.blocking(time.sleep, 0.1)``) so the pool starts another worker while
this one waits.
"""

import asyncio as _asyncio
import concurrent.futures as _futures
import contextvars as _contextvars
import functools as _functools
import os as _os
import threading as _threading

from . import _cmwq
from ._cmwq import (
    CPU_INTENSIVE,
    FREEZABLE,
    HIGHPRI,
    MAX_ACTIVE_LIMIT,
    MEM_RECLAIM,
    POWER_EFFICIENT,
    UNBOUND,
    Runtime,
    blocking,
    dump,
    is_worker_thread,
)

__all__ = [
    "CPU_INTENSIVE",
    "FREEZABLE",
    "HIGHPRI",
    "MAX_ACTIVE_LIMIT",
    "MEM_RECLAIM",
    "POWER_EFFICIENT",
    "UNBOUND",
    "Runtime",
    "Workqueue",
    "blocking",
    "dump",
    "is_worker_thread",
    "system_highpri_wq",
    "system_long_wq",
    "system_unbound_wq",
    "system_wq",
    "system_freezable_wq",
    "system_power_efficient_wq",
]

class Workqueue(_futures.Executor):
    """A named cmwq workqueue, usable wherever a ``concurrent.futures.Executor`` is.

    ``flags`` combines :data:`HIGHPRI`, :data:`CPU_INTENSIVE`, :data:`UNBOUND`,
    :data:`FREEZABLE`, :data:`MEM_RECLAIM`; ``max_active`` limits how many of its items run at
    once (per CPU for bound queues; 0 means the default, 1024; at most 2048); ``ordered=True``
    runs one item at a time in submission order. ``runtime`` selects an isolated
    :class:`Runtime` instead of the process-wide one.

    Raises ``TypeError`` for a non-str name and ``ValueError`` for an empty name, unknown flag
    bits or an out-of-range ``max_active``.
    """

    def __init__(self, name, flags=0, max_active=0, ordered=False, *, runtime=None):
        self._attach(_cmwq._Queue(name, flags, max_active, bool(ordered), runtime))

    @classmethod
    def _wrap(cls, native):
        self = cls.__new__(cls)
        self._attach(native)
        return self

    def _attach(self, native):
        self._q = native
        if type(self).submit is Workqueue.submit:
            # The native method has the same signature and behaviour; calling it directly saves
            # a Python frame per submit. A subclass that overrides submit keeps its override.
            self.submit = native.submit

    def submit(self, fn, /, *args, **kwargs):
        """Schedules ``fn(*args, **kwargs)``; returns its ``concurrent.futures.Future``.

        Raises ``TypeError`` if ``fn`` is not callable and ``RuntimeError`` after
        :meth:`shutdown` or once the interpreter is exiting.
        """
        return self._q.submit(fn, *args, **kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stops taking work, as ``ThreadPoolExecutor.shutdown`` does.

        ``cancel_futures=True`` cancels the items no worker has claimed yet; ``wait=True``
        waits for the others (interruptible with Ctrl-C). System queues are shared by the whole
        process: on them, ``shutdown`` cancels and waits for the items submitted through this
        object but keeps accepting work.
        """
        # Any truthy value, as ``ThreadPoolExecutor`` takes them.
        self._q.shutdown(bool(wait), bool(cancel_futures))

    def flush(self):
        """Waits until every item submitted before the call has finished.

        Raises ``RuntimeError`` if called from one of this queue's own items (it would wait for
        itself).
        """
        self._q.flush()

    def stats(self):
        """The queue's counters: ``total``, ``in_flight``, ``cpu_time`` (seconds), ``cpu_hogs``,
        ``cm_wakeups``, ``mayday``, ``rescued``, ``panics``, ``refused`` (the kernel's
        ``wq_monitor.py`` columns) and ``pending`` (items submitted here and not finished)."""
        return self._q.stats()

    async def run(self, fn, /, *args, **kwargs):
        """Runs ``fn(*args, **kwargs)`` on this queue and awaits its result, from asyncio.

        Like ``asyncio.to_thread``, the current ``contextvars`` context is copied into the call.
        Cancelling the awaiting task cancels the item if it has not started.
        """
        if not callable(fn):
            raise TypeError(f"run() needs a callable, got a {type(fn).__name__} object")
        loop = _asyncio.get_running_loop()
        call = _functools.partial(_contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self, call)

    @property
    def name(self):
        """The queue's name."""
        return self._q.name

    @property
    def flags(self):
        """The queue's flag bits."""
        return self._q.flags

    @property
    def max_active(self):
        """The effective concurrency limit."""
        return self._q.max_active

    @property
    def runtime(self):
        """The :class:`Runtime` running this queue."""
        return self._q.runtime

    def __repr__(self):
        return f"<cmwq.Workqueue {self._q.name!r} flags={self._q.flags:#x} max_active={self._q.max_active}>"


_SYSTEM_QUEUES = (
    "system_wq",
    "system_highpri_wq",
    "system_long_wq",
    "system_unbound_wq",
    "system_freezable_wq",
    "system_power_efficient_wq",
)
_system_cache = {}
_system_lock = _threading.Lock()


def __getattr__(name):
    # The system queues live on the global runtime, whose threads start on first use only.
    if name in _SYSTEM_QUEUES:
        with _system_lock:
            queue = _system_cache.get(name)
            if queue is None:
                queue = _system_cache[name] = Workqueue._wrap(_cmwq._Queue.system(name))
        return queue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SYSTEM_QUEUES))


# Like ThreadPoolExecutor: at interpreter exit, refuse new work and wait for queued and running
# items before the interpreter is finalized (the wait is interruptible with Ctrl-C).
_threading._register_atexit(_cmwq._python_exit)
# A child made by fork has none of the parent's workers: its exit must not wait for the items
# they were running (a ProcessPoolExecutor's forked workers hung at exit).
_os.register_at_fork(after_in_child=_cmwq._after_fork_in_child)
