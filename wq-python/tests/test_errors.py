"""Bad input gets Python exceptions, never a crash or a hang."""

import pytest

import cmwq


def test_non_callable_submit_is_type_error():
    with cmwq.Workqueue("typeerr") as wq:
        with pytest.raises(TypeError, match="callable"):
            wq.submit(42)
        with pytest.raises(TypeError):
            wq.submit()


@pytest.mark.parametrize("max_active", [-1, -(2**70), cmwq.MAX_ACTIVE_LIMIT + 1, 2**40])
def test_max_active_out_of_range_is_value_error(max_active):
    with pytest.raises(ValueError, match="max_active"):
        cmwq.Workqueue("bad-max", max_active=max_active)


def test_max_active_limit_itself_is_accepted():
    wq = cmwq.Workqueue("max-ok", max_active=cmwq.MAX_ACTIVE_LIMIT)
    assert wq.max_active == cmwq.MAX_ACTIVE_LIMIT
    wq.shutdown()


@pytest.mark.parametrize("flags", [1 << 20, -1, 2**40])
def test_unknown_flag_bits_are_value_error(flags):
    with pytest.raises(ValueError, match="flag"):
        cmwq.Workqueue("bad-flags", flags=flags)


def test_bad_names():
    with pytest.raises(ValueError):
        cmwq.Workqueue("")
    with pytest.raises(ValueError):
        cmwq.Workqueue("nul\0name")
    with pytest.raises(TypeError):
        cmwq.Workqueue(5)


def test_wrong_argument_types_are_type_errors():
    with pytest.raises(TypeError):
        cmwq.Workqueue("t", flags="HIGHPRI")
    with pytest.raises(TypeError):
        cmwq.Workqueue("t", max_active=1.5)
    with pytest.raises(TypeError):
        cmwq.Workqueue("t", runtime="global")


def test_submit_after_shutdown_is_runtime_error():
    wq = cmwq.Workqueue("closed")
    wq.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        wq.submit(print)
    # shutdown twice is harmless, as with ThreadPoolExecutor
    wq.shutdown()


def test_bad_runtime_arguments():
    with pytest.raises(ValueError):
        cmwq.Runtime(cpus=[-1])
    with pytest.raises(ValueError):
        cmwq.Runtime(cpus=[100_000])
    with pytest.raises(ValueError):
        cmwq.Runtime(cpus=[])
    with pytest.raises(TypeError):
        cmwq.Runtime(cpus="0")
    # Read one at a time: a huge iterable is refused, not allocated (it aborted the interpreter).
    with pytest.raises(ValueError, match="more than 65536 CPUs"):
        cmwq.Runtime(cpus=range(10**12))
    with pytest.raises(ValueError, match="got 18446744073709551616"):
        cmwq.Runtime(cpus=[2**64])
    with pytest.raises(ValueError):
        cmwq.Runtime(idle_timeout=-1.0)
    with pytest.raises(ValueError):
        cmwq.Runtime(cpu_hog_threshold=float("nan"))
    with pytest.raises(ValueError):
        cmwq.Runtime(max_workers=0)
    with pytest.raises(ValueError):
        cmwq.Runtime(detector="psychic")


def test_blocking_needs_a_callable():
    with pytest.raises(TypeError):
        cmwq.blocking(None)
    # outside a worker it is a plain call
    assert cmwq.blocking(divmod, 7, 2) == (3, 1)


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        cmwq.system_nonexistent_wq


def test_a_name_that_is_not_valid_utf8_gets_pythons_unicode_error():
    """A str with a lone surrogate cannot be a name; the error says so (it said "workqueue name
    must be str, not str")."""
    with pytest.raises(UnicodeError):
        cmwq.Workqueue("bad\ud800name")


def test_the_stub_declares_every_public_runtime_member():
    import ast
    import os

    stub = os.path.join(os.path.dirname(cmwq.__file__), "_cmwq.pyi")
    with open(stub) as f:
        tree = ast.parse(f.read())
    runtime = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Runtime")
    declared = {n.name for n in runtime.body if isinstance(n, ast.FunctionDef)}
    public = {a for a in dir(cmwq.Runtime) if not a.startswith("_")}
    assert public - declared == set()
