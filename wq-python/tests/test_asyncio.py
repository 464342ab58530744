"""cmwq from asyncio: `await wq.run(...)` and `loop.run_in_executor(wq, ...)`."""

import asyncio
import contextvars
import threading

import pytest

import cmwq

request_id = contextvars.ContextVar("request_id", default="unset")


def test_run_returns_the_result():
    async def main():
        with cmwq.Workqueue("aio") as wq:
            return await wq.run(divmod, 17, 5)

    assert asyncio.run(main()) == (3, 2)


def test_run_passes_kwargs_and_copies_contextvars():
    def read(prefix, *, suffix):
        return prefix + request_id.get() + suffix

    async def main():
        request_id.set("r-42")
        return await cmwq.system_wq.run(read, "<", suffix=">")

    assert asyncio.run(main()) == "<r-42>"


def test_run_in_executor():
    async def main():
        loop = asyncio.get_running_loop()
        with cmwq.Workqueue("rie") as wq:
            return await asyncio.gather(*(loop.run_in_executor(wq, pow, 2, i) for i in range(10)))

    assert asyncio.run(main()) == [2**i for i in range(10)]


def test_wrap_future():
    async def main():
        with cmwq.Workqueue("wrap") as wq:
            return await asyncio.wrap_future(wq.submit(sorted, [3, 1, 2]))

    assert asyncio.run(main()) == [1, 2, 3]


def test_run_raises_the_callables_exception():
    def fail():
        raise LookupError("missing")

    async def main():
        await cmwq.system_wq.run(fail)

    with pytest.raises(LookupError, match="missing"):
        asyncio.run(main())


def test_run_rejects_non_callables():
    async def main():
        await cmwq.system_wq.run("not callable")

    with pytest.raises(TypeError):
        asyncio.run(main())


def test_cancelling_the_task_cancels_an_unstarted_item():
    ran = []
    gate = threading.Event()

    async def main():
        wq = cmwq.Workqueue("aio-cancel", ordered=True)
        blocker = wq.submit(gate.wait, 30)
        task = asyncio.ensure_future(wq.run(ran.append, "should not run"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        await asyncio.wrap_future(blocker)
        wq.shutdown(wait=True)

    asyncio.run(main())
    assert ran == []


def test_many_concurrent_runs():
    async def main():
        wq = cmwq.Workqueue("aio-many")
        out = await asyncio.gather(*(wq.run(abs, -i) for i in range(500)))
        wq.shutdown()
        return out

    assert asyncio.run(main()) == list(range(500))
