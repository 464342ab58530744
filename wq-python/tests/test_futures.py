"""The futures cmwq hands out, and the queue that feeds its workers.

cmwq builds its futures with a native condition (`_condition`) and completes them from Rust;
workers run several queued calls per GIL hold. These tests pin down that all of this behaves as
`concurrent.futures` code expects.
"""

import asyncio
import concurrent.futures as cf
import threading
import time

import pytest

import cmwq
from cmwq._cmwq import _FutureCondition


@pytest.fixture
def wq():
    queue = cmwq.Workqueue("pytest-futures")
    yield queue
    queue.shutdown(wait=True)


def gate():
    """An item that blocks until the returned event is set (its sleep releases the GIL)."""
    event = threading.Event()

    def item():
        cmwq.blocking(event.wait, 10)
        return "opened"

    return event, item


def test_futures_are_plain_concurrent_futures(wq):
    fut = wq.submit(int, "7")
    assert type(fut) is cf.Future
    assert fut.result(timeout=10) == 7
    assert sorted(vars(fut)) == sorted(vars(cf.Future()))
    assert "state=finished returned int" in repr(fut)


def test_result_timeout_then_result(wq):
    event, item = gate()
    fut = wq.submit(item)
    with pytest.raises(cf.TimeoutError):
        fut.result(timeout=0.05)
    assert fut.running()
    event.set()
    assert fut.result(timeout=10) == "opened"
    assert fut.done() and not fut.cancelled()


def test_many_threads_wait_on_one_future(wq):
    event, item = gate()
    fut = wq.submit(item)
    results = []
    lock = threading.Lock()

    def waiter():
        value = fut.result(timeout=10)
        with lock:
            results.append(value)

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    assert results == []
    event.set()
    for t in threads:
        t.join(10)
    assert results == ["opened"] * 8


def test_done_callbacks_run_once_before_and_after_completion(wq):
    event, item = gate()
    fut = wq.submit(item)
    seen = []
    called = threading.Event()

    def early(f):
        seen.append(("early", f.result(), cmwq.is_worker_thread()))
        called.set()

    fut.add_done_callback(early)
    event.set()
    fut.result(timeout=10)
    # As with any executor, result() may return before the worker has run the callbacks.
    assert called.wait(10)
    fut.add_done_callback(lambda f: seen.append(("late", f.result(), cmwq.is_worker_thread())))
    assert seen == [("early", "opened", True), ("late", "opened", False)]


def test_exception_reaches_waiters_and_callbacks(wq):
    seen = []

    def boom():
        raise ValueError("boom")

    fut = wq.submit(boom)
    fut.add_done_callback(lambda f: seen.append(type(f.exception())))
    done, _ = cf.wait([fut], timeout=10)
    assert done == {fut}
    with pytest.raises(ValueError, match="boom"):
        fut.result()
    assert seen == [ValueError]


def test_wait_first_completed_and_as_completed(wq):
    event, item = gate()
    slow = wq.submit(item)
    fast = wq.submit(pow, 3, 3)
    done, pending = cf.wait([slow, fast], timeout=10, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and pending == {slow}
    event.set()
    assert [f.result() for f in cf.as_completed([slow, fast], timeout=10)] in (
        [27, "opened"],
        ["opened", 27],
    )


def test_wrap_future_and_cancel_before_start():
    one = cmwq.Workqueue("pytest-futures-ordered", ordered=True)
    event, item = gate()
    blocker = one.submit(item)
    queued = one.submit(pow, 2, 5)
    assert queued.cancel()
    assert queued.cancelled()

    async def main():
        event.set()
        return await asyncio.wrap_future(blocker)

    assert asyncio.run(main()) == "opened"
    with pytest.raises(cf.CancelledError):
        queued.result(timeout=10)
    one.shutdown()


@pytest.mark.parametrize("make", [threading.Condition, _FutureCondition], ids=["threading", "native"])
def test_condition_protocol(make):
    """The native condition behaves as threading.Condition() (run against both)."""
    c = make()
    with pytest.raises(RuntimeError):
        c.release()
    with pytest.raises(RuntimeError):
        c.wait(0)
    with pytest.raises(RuntimeError):
        c.notify()
    assert c.acquire()
    assert c.acquire(False)  # re-entrant
    c.release()
    assert c.wait(0.01) is False  # gives up every level, takes them back
    assert c.wait_for(lambda: 5, 1) == 5
    c.release()
    with pytest.raises(RuntimeError):
        c.release()
    got = []

    def other():
        got.append(c.acquire(False))
        got.append(c.acquire(timeout=0.01))

    with c:
        t = threading.Thread(target=other)
        t.start()
        t.join(10)
    assert got == [False, False]
    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert got == [False, False, True, True]


@pytest.mark.parametrize("make", [threading.Condition, _FutureCondition], ids=["threading", "native"])
def test_condition_notify_wakes_waiters_oldest_first(make):
    cond = make()
    entered, woke = [], []

    def waiter(name):
        with cond:
            entered.append(name)
            assert cond.wait(10)
            woke.append(name)

    def start(name):
        t = threading.Thread(target=waiter, args=(name,))
        t.start()
        while name not in entered:
            time.sleep(0.001)
        # Taking the lock proves the waiter is inside wait(): it held the lock until then.
        with cond:
            pass
        return t

    first, second = start("first"), start("second")
    with cond:
        cond.notify()
    first.join(10)
    assert woke == ["first"]
    with cond:
        cond.notify_all()
    second.join(10)
    assert woke == ["first", "second"]


@pytest.mark.parametrize("submitters", [1, 3])
def test_every_item_runs_exactly_once(submitters):
    wq = cmwq.Workqueue("pytest-once")
    counts = [0] * (submitters * 5000)
    lock = threading.Lock()

    def item(i):
        with lock:
            counts[i] += 1
        return i

    futures = [None] * len(counts)

    def submit(start):
        for i in range(start, len(counts), submitters):
            futures[i] = wq.submit(item, i)

    threads = [threading.Thread(target=submit, args=(s,)) for s in range(submitters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [f.result(timeout=30) for f in futures] == list(range(len(counts)))
    wq.shutdown()
    assert counts == [1] * len(counts)
    assert wq.stats()["pending"] == 0


def test_ordered_queue_keeps_submission_order_under_bursts():
    wq = cmwq.Workqueue("pytest-ordered-burst", ordered=True)
    seen = []
    futures = [wq.submit(seen.append, i) for i in range(3000)]
    cf.wait(futures, timeout=30)
    wq.shutdown()
    assert seen == list(range(3000))


def test_cancel_futures_after_a_burst_cancels_the_rest():
    wq = cmwq.Workqueue("pytest-cancel-burst", ordered=True)
    event, item = gate()
    first = wq.submit(item)
    rest = [wq.submit(pow, 2, i) for i in range(2000)]
    while not first.running():
        time.sleep(0.001)
    wq.shutdown(wait=False, cancel_futures=True)
    event.set()
    assert first.result(timeout=10) == "opened"
    assert all(f.cancelled() for f in rest)
    wq.shutdown(wait=True)


def test_future_condition_is_not_tracked_by_the_collector(wq):
    import gc

    fut = wq.submit(int)
    assert gc.is_tracked(fut) and gc.is_tracked(fut._waiters)
    assert not gc.is_tracked(fut._condition)
    assert fut.result(timeout=10) == 0


def test_submits_on_an_idle_queue_get_fresh_futures(wq):
    # A submit that finds the queue idle takes a future made after the previous such submit;
    # each must still be a new, pending future of its own, waited on through its own condition.
    futures = []
    for i in range(4):
        time.sleep(0.005)  # idle again, and not part of a burst
        fut = wq.submit(pow, 2, i)
        futures.append(fut)
        assert fut.result(timeout=10) == 2**i
    assert len({id(f) for f in futures}) == len(futures)
    assert len({id(f._condition) for f in futures}) == len(futures)

    event, item = gate()
    time.sleep(0.005)
    fut = wq.submit(item)
    assert not fut.done() and fut not in futures
    results = []
    waiter = threading.Thread(target=lambda: results.append(fut.result(timeout=10)))
    waiter.start()
    time.sleep(0.05)
    assert results == []
    event.set()
    waiter.join(10)
    assert results == ["opened"]
    # The next one is fresh again, not the one just completed.
    time.sleep(0.005)
    nxt = wq.submit(int, "3")
    assert nxt is not fut and nxt.result(timeout=10) == 3


def test_subclass_overriding_submit_keeps_its_override():
    calls = []

    class Counting(cmwq.Workqueue):
        def submit(self, fn, /, *args, **kwargs):
            calls.append(fn)
            return super().submit(fn, *args, **kwargs)

    wq = Counting("pytest-subclass")
    assert list(wq.map(abs, [-1, -2])) == [1, 2]
    wq.shutdown()
    assert calls == [abs, abs]
