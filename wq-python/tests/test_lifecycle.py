"""Interpreter exit and Ctrl-C, each in a fresh interpreter."""

import pytest


def check(proc, expected_stdout):
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "Fatal Python error" not in proc.stderr, proc.stderr
    assert proc.stdout.split() == expected_stdout.split(), (proc.stdout, proc.stderr)


def test_exit_with_queued_work_runs_it_and_exits(script):
    proc = script(
        """
        import time, cmwq
        wq = cmwq.Workqueue("exiting", ordered=True)
        done = []
        def item(i):
            cmwq.blocking(time.sleep, 0.01)
            done.append(i)
            if i == 49:
                print("last item ran", len(done))
        for i in range(50):
            wq.submit(item, i)
        print("main done")
        """
    )
    check(proc, "main done last item ran 50")


def test_exit_with_work_on_system_queues(script):
    proc = script(
        """
        import time, cmwq
        for q in (cmwq.system_wq, cmwq.system_unbound_wq, cmwq.system_long_wq):
            for _ in range(20):
                q.submit(cmwq.blocking, time.sleep, 0.01)
        print("ok")
        """
    )
    check(proc, "ok")


def test_submit_during_exit_is_refused(script):
    proc = script(
        """
        import atexit, cmwq
        wq = cmwq.Workqueue("late")
        def late():
            try:
                wq.submit(print, "must not run")
            except RuntimeError as e:
                print("refused:", "interpreter shutdown" in str(e))
        atexit.register(late)
        """
    )
    check(proc, "refused: True")


def test_exit_while_items_submit_more(script):
    proc = script(
        """
        import time, cmwq
        wq = cmwq.Workqueue("chain")
        def chain(n):
            cmwq.blocking(time.sleep, 0.005)
            try:
                wq.submit(chain, n + 1)
            except RuntimeError:
                pass
        wq.submit(chain, 0)
        time.sleep(0.05)
        print("bye")
        """
    )
    check(proc, "bye")


@pytest.mark.parametrize(
    "wait_call",
    ["fut.result()", "wq.flush()", "wq.shutdown(wait=True)"],
)
def test_keyboard_interrupt_while_waiting_is_not_swallowed(script, wait_call):
    proc = script(
        f"""
        import os, signal, time, cmwq
        wq = cmwq.Workqueue("sigint")
        def interrupt_main_then_block():
            # Signal only once the main thread is surely blocked in its wait: a signal landing
            # between CPython releasing the GIL and blocking on a lock is only seen when that
            # lock is released (a CPython race, the same with ThreadPoolExecutor).
            cmwq.blocking(time.sleep, 0.2)
            os.kill(os.getpid(), signal.SIGINT)
            cmwq.blocking(time.sleep, 2.0)
        fut = wq.submit(interrupt_main_then_block)
        start = time.monotonic()
        try:
            {wait_call}
        except KeyboardInterrupt:
            print("KeyboardInterrupt", time.monotonic() - start < 1.0)
        else:
            print("not interrupted")
        """
    )
    check(proc, "KeyboardInterrupt True")


def test_exit_hook_interrupted_does_not_crash(script):
    """Ctrl-C while the exit hook waits: queued items are cancelled, the process still ends
    without a crash (the running item is abandoned like a daemon thread)."""
    proc = script(
        """
        import os, signal, threading, time, cmwq
        wq = cmwq.Workqueue("stuck", ordered=True)
        def long_item():
            cmwq.blocking(time.sleep, 0.5)
        for _ in range(20):
            wq.submit(long_item)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        print("exiting")
        """
    )
    assert "Fatal Python error" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1, -2, 130), (proc.returncode, proc.stderr)
    assert "exiting" in proc.stdout


def test_a_forked_child_exits_while_the_parent_has_an_item_running(script):
    """A child made by fork (a ProcessPoolExecutor's workers, on Linux's default start method)
    has none of the parent's workers: its exit does not wait for the item they were running
    (it hung for ever)."""
    proc = script(
        """
        import os, sys, threading, time, cmwq
        wq = cmwq.Workqueue("forking", max_active=1)
        gate = threading.Event()
        running = threading.Event()
        wq.submit(lambda: (running.set(), gate.wait()))
        running.wait(10)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("child exited", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.02)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("child hung")
        gate.set()
        """
    )
    check(proc, "child exited 0")


def test_a_forked_child_is_refused_by_the_parents_queues_and_can_use_its_own(script):
    """In a child made by fork, the parent's queues raise instead of taking work no thread of
    the child would run (its futures stayed pending for ever), and a runtime built in the child
    runs work."""
    proc = script(
        """
        import os, sys, time, cmwq
        wq = cmwq.Workqueue("forking")
        assert wq.submit(lambda: 1).result(10) == 1
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                wq.submit(lambda: 2)
                code = 3
            except RuntimeError as err:
                if "fork" not in str(err):
                    code = 4
            try:
                cmwq.Workqueue("child")
                code = 5
            except RuntimeError:
                pass
            try:
                own = cmwq.Workqueue("own", runtime=cmwq.Runtime(cpus=[0]))
                if own.submit(lambda: 6 * 7).result(10) != 42:
                    code = 6
                own.shutdown()
            except BaseException:
                code = 7
            sys.stdout.flush()
            os._exit(code)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print("child exited", os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.02)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("child hung")
        print("parent still works", wq.submit(lambda: 8).result(10))
        """
    )
    check(proc, "child exited 0 parent still works 8")


def test_a_forked_child_waits_at_exit_for_work_on_its_own_runtime(script):
    """The exit hook of a child made by fork skips the parent's items only: work the child
    queued on a runtime of its own runs before it exits (it was skipped, lost, and the child
    could crash finalizing under a running item)."""
    proc = script(
        """
        import os, sys, time, cmwq
        pid = os.fork()
        if pid == 0:
            own = cmwq.Workqueue("own", runtime=cmwq.Runtime())
            def item():
                cmwq.blocking(time.sleep, 0.5)
                print("child item ran", flush=True)
            own.submit(item)
            def spin():
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    pass
            for _ in range(4):
                own.submit(spin)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exited", os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    check(proc, "child item ran child exited 0")


@pytest.mark.parametrize("call", ["wq.flush()", "wq.shutdown(wait=True)"])
def test_a_forked_child_does_not_wait_for_the_parents_items(script, call):
    """In a child made by fork, waiting on a parent's queue for the parent's running item would
    wait for ever (no worker of the child runs it): flush raises, shutdown returns at once, as
    ThreadPoolExecutor's does."""
    proc = script(
        f"""
        import os, signal, threading, cmwq
        wq = cmwq.Workqueue("forking")
        gate, running = threading.Event(), threading.Event()
        wq.submit(lambda: (running.set(), gate.wait()))
        running.wait(10)
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a hung child ends with SIGALRM
            try:
                {call}
            except RuntimeError as err:
                assert "fork" in str(err), err
            print("returned", flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exited", os.waitstatus_to_exitcode(status), flush=True)
        gate.set()
        """
    )
    check(proc, "returned child exited 0")
