"""cmwq.Workqueue as a concurrent.futures.Executor."""

import concurrent.futures as cf
import threading
import time
import traceback

import pytest

import cmwq


@pytest.fixture
def wq():
    queue = cmwq.Workqueue("pytest")
    yield queue
    queue.shutdown(wait=True)


def test_is_an_executor_returning_real_futures(wq):
    assert isinstance(wq, cf.Executor)
    fut = wq.submit(pow, 2, 10)
    assert type(fut) is cf.Future
    assert fut.result(timeout=10) == 1024


def test_kwargs_and_positional_only_fn(wq):
    def f(fn, *, scale):
        return fn * scale

    # `fn` may itself be passed as a keyword argument to the callable.
    assert wq.submit(f, fn=3, scale=4).result(timeout=10) == 12


def test_runs_on_a_worker_thread(wq):
    assert not cmwq.is_worker_thread()
    assert wq.submit(cmwq.is_worker_thread).result(timeout=10) is True
    assert wq.submit(threading.get_ident).result(timeout=10) != threading.get_ident()


def test_map_keeps_order_and_accepts_timeout_and_chunksize(wq):
    out = list(wq.map(lambda a, b: a * b, range(100), range(100), timeout=30, chunksize=7))
    assert out == [i * i for i in range(100)]


def test_map_timeout_raises(wq):
    gate = threading.Event()
    results = wq.map(gate.wait, [30.0], timeout=0.1)
    with pytest.raises(cf.TimeoutError):
        next(results)
    gate.set()


def test_wait_and_as_completed(wq):
    futs = [wq.submit(cmwq.blocking, time.sleep, 0.01 * (i % 3)) for i in range(20)]
    done, not_done = cf.wait(futs, timeout=30)
    assert len(done) == 20 and not not_done
    assert set(cf.as_completed(futs, timeout=30)) == set(futs)


def test_exception_propagates_with_traceback(wq):
    def inner_failure():
        raise ValueError("boom")

    def outer():
        inner_failure()

    fut = wq.submit(outer)
    with pytest.raises(ValueError, match="boom"):
        fut.result(timeout=10)
    text = "".join(traceback.format_exception(type(fut.exception()), fut.exception(), fut.exception().__traceback__))
    assert "inner_failure" in text and "outer" in text


def test_base_exceptions_go_to_the_future_and_the_worker_survives(wq):
    def interrupted():
        raise KeyboardInterrupt("from a work item")

    fut = wq.submit(interrupted)
    assert isinstance(fut.exception(timeout=10), KeyboardInterrupt)
    assert wq.submit(lambda: "still alive").result(timeout=10) == "still alive"


def test_context_manager_waits_for_all_items():
    done = []
    with cmwq.Workqueue("ctx") as wq:
        for i in range(10):
            wq.submit(lambda i=i: (cmwq.blocking(time.sleep, 0.02), done.append(i)))
    assert sorted(done) == list(range(10))
    with pytest.raises(RuntimeError, match="after shutdown"):
        wq.submit(print)


def wait_until_running(fut):
    started = time.monotonic()
    while fut.running() is False and time.monotonic() - started < 10:
        time.sleep(0.005)
    assert fut.running()


def test_shutdown_cancel_futures_cancels_unstarted_items():
    wq = cmwq.Workqueue("cancel", ordered=True)
    gate = threading.Event()
    first = wq.submit(gate.wait, 30)
    wait_until_running(first)
    rest = [wq.submit(time.sleep, 0) for _ in range(10)]
    wq.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in rest)
    gate.set()
    assert first.result(timeout=10) is True
    wq.shutdown(wait=True)


def test_cancel_futures_cancels_every_item_when_a_callback_raises_a_base_exception():
    """A done-callback raising a BaseException gets through Future.cancel: shutdown raises it, but
    only after every unstarted item's future is cancelled, none left pending for ever."""

    class Boom(BaseException):
        pass

    def boom(_):
        raise Boom("from a done-callback")

    wq = cmwq.Workqueue("cancel-boom", ordered=True)
    gate = threading.Event()
    first = wq.submit(gate.wait, 30)
    wait_until_running(first)
    rest = [wq.submit(int, i) for i in range(5)]
    rest[0].add_done_callback(boom)
    with pytest.raises(Boom):
        wq.shutdown(wait=False, cancel_futures=True)
    assert [f.cancelled() for f in rest] == [True] * 5
    gate.set()
    assert first.result(timeout=10) is True
    wq.shutdown(wait=True)


def test_items_are_claimed_without_the_gil():
    """A worker claims its item in Rust while the submitter still holds the GIL, so an immediate
    shutdown(cancel_futures=True) finds it already picked up, as ThreadPoolExecutor's would."""
    wq = cmwq.Workqueue("claim")
    fut = wq.submit(lambda: "ran")
    # sum() over a range runs in C and never releases the GIL: the worker cannot take it.
    sum(range(20_000_000))
    wq.shutdown(wait=True, cancel_futures=True)
    assert not fut.cancelled()
    assert fut.result(timeout=10) == "ran"


def test_cancelled_future_is_skipped(wq):
    gate = threading.Event()
    ordered = cmwq.Workqueue("skip", ordered=True)
    ran = []
    ordered.submit(gate.wait, 30)
    victim = ordered.submit(ran.append, 1)
    assert victim.cancel()
    gate.set()
    ordered.shutdown(wait=True)
    assert ran == []


def test_flush_waits_for_earlier_items(wq):
    done = []
    for i in range(20):
        wq.submit(lambda i=i: (cmwq.blocking(time.sleep, 0.005), done.append(i)))
    wq.flush()
    assert sorted(done) == list(range(20))


def test_flush_from_own_item_is_refused(wq):
    fut = wq.submit(lambda: wq.flush())
    with pytest.raises(RuntimeError, match="deadlock"):
        fut.result(timeout=10)


def test_shutdown_from_own_item_is_refused(wq):
    fut = wq.submit(lambda: wq.shutdown(wait=True))
    with pytest.raises(RuntimeError, match="deadlock"):
        fut.result(timeout=10)


def test_waiting_in_rust_releases_the_gil(wq):
    """While the main thread waits in flush(), other Python threads keep running."""
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    wq.submit(cmwq.blocking, time.sleep, 0.3)
    before = len(ticks)
    wq.flush()
    after = len(ticks)
    stop.set()
    t.join()
    assert after - before >= 20


def test_stats_count_items(wq):
    base = wq.stats()
    for key in ("name", "total", "in_flight", "cpu_time", "cpu_hogs", "cm_wakeups", "mayday",
                "rescued", "panics", "refused", "pending"):
        assert key in base
    cf.wait([wq.submit(abs, -i) for i in range(50)])
    wq.flush()
    after = wq.stats()
    assert after["total"] - base["total"] == 50
    assert after["pending"] == 0
    assert after["name"] == "pytest"


def test_ordered_queue_runs_one_at_a_time_in_order():
    wq = cmwq.Workqueue("ordered", ordered=True)
    seen, running, peak = [], [0], [0]
    lock = threading.Lock()

    def item(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        cmwq.blocking(time.sleep, 0.002)
        seen.append(i)
        with lock:
            running[0] -= 1

    for i in range(30):
        wq.submit(item, i)
    wq.shutdown(wait=True)
    assert seen == list(range(30))
    assert peak[0] == 1
    assert wq.flags & cmwq.UNBOUND


def test_max_active_limits_concurrency(one_cpu_runtime):
    wq = cmwq.Workqueue("limit2", max_active=2, runtime=one_cpu_runtime)
    running, peak = [0], [0]
    lock = threading.Lock()

    def item():
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        cmwq.blocking(time.sleep, 0.03)
        with lock:
            running[0] -= 1

    for _ in range(8):
        wq.submit(item)
    wq.shutdown(wait=True)
    assert peak[0] == 2
    assert wq.max_active == 2


@pytest.mark.parametrize(
    "flags",
    [cmwq.HIGHPRI, cmwq.CPU_INTENSIVE, cmwq.UNBOUND, cmwq.FREEZABLE, cmwq.MEM_RECLAIM,
     cmwq.HIGHPRI | cmwq.MEM_RECLAIM],
)
def test_flags(flags):
    with cmwq.Workqueue(f"flags-{flags:#x}", flags=flags) as wq:
        assert wq.flags & flags == flags
        assert wq.submit(sum, [1, 2, 3]).result(timeout=10) == 6


def test_flag_constants_are_distinct_bits():
    values = [cmwq.HIGHPRI, cmwq.CPU_INTENSIVE, cmwq.UNBOUND, cmwq.FREEZABLE, cmwq.MEM_RECLAIM]
    assert all(isinstance(v, int) and v > 0 and v & (v - 1) == 0 for v in values)
    assert len(set(values)) == len(values)


@pytest.mark.parametrize(
    "name",
    ["system_wq", "system_highpri_wq", "system_long_wq", "system_unbound_wq"],
)
def test_system_queues(name):
    wq = getattr(cmwq, name)
    assert isinstance(wq, cmwq.Workqueue)
    assert wq is getattr(cmwq, name)
    assert wq.submit(len, "abc").result(timeout=10) == 3
    # A `with` block on a shared system queue must not kill it for the rest of the process.
    with wq:
        wq.submit(len, "x")
    assert wq.submit(len, "ab").result(timeout=10) == 2


def test_dump_mentions_queues():
    wq = cmwq.Workqueue("dump-me")
    text = cmwq.dump()
    assert isinstance(text, str) and "dump-me" in text
    wq.shutdown()


def test_runtime_stats_and_dump(one_cpu_runtime):
    wq = cmwq.Workqueue("rt-stats", runtime=one_cpu_runtime)
    wq.submit(abs, 1).result(timeout=10)
    pools = one_cpu_runtime.stats()
    assert pools and all("workers" in p and "running" in p for p in pools)
    assert "rt-stats" in one_cpu_runtime.dump()
    assert wq.runtime.cpus == one_cpu_runtime.cpus
    wq.shutdown()


def test_flush_does_not_wait_for_items_submitted_after_the_call():
    """flush waits for the items submitted before it, not for later ones (it also waited for
    wq-core's tokens queued since the call, and hung on a later item waiting for this thread)."""
    wq = cmwq.Workqueue("flush-late")
    release = threading.Event()
    wq.submit(cmwq.blocking, time.sleep, 0.5)
    flusher = threading.Thread(target=wq.flush)
    flusher.start()
    time.sleep(0.2)  # the flush has begun
    late = wq.submit(cmwq.blocking, release.wait, 60)
    flusher.join(30)
    finished = not flusher.is_alive()
    release.set()
    flusher.join(60)
    assert late.result(timeout=60) is True
    wq.shutdown()
    assert finished, "flush() waited for an item submitted after it was called"


def test_system_queue_shutdown_waits_only_for_its_own_earlier_items():
    """shutdown(wait=True) on a system queue, which keeps taking work, waits for what was
    submitted through the object before it, not for the queue to be idle (under steady load
    from elsewhere it never returned)."""
    stop = threading.Event()

    def producer():
        while not stop.is_set():
            cmwq.system_unbound_wq.submit(cmwq.blocking, time.sleep, 0.2)
            time.sleep(0.02)

    t = threading.Thread(target=producer)
    t.start()
    try:
        time.sleep(0.5)
        returned = threading.Event()
        threading.Thread(
            target=lambda: (cmwq.system_unbound_wq.shutdown(wait=True), returned.set()), daemon=True
        ).start()
        ok = returned.wait(30)
    finally:
        stop.set()
        t.join(30)
    assert ok, "system_unbound_wq.shutdown(wait=True) did not return while other work kept arriving"


@pytest.mark.parametrize("kwargs", [{"wait": 0}, {"wait": None}, {"cancel_futures": 1}])
def test_shutdown_takes_any_truthy_value_as_thread_pool_executor_does(kwargs):
    wq = cmwq.Workqueue("truthy", ordered=1)
    wq.shutdown(**kwargs)
    wq.shutdown()
