"""The installed package: layout, typing files, stable-ABI extension."""

import importlib.util
import os

import cmwq
from cmwq import _cmwq


def test_typing_files_are_installed():
    pkg = os.path.dirname(cmwq.__file__)
    for name in ("py.typed", "__init__.pyi", "_cmwq.pyi"):
        assert os.path.isfile(os.path.join(pkg, name)), name


def test_native_module_is_abi3():
    spec = importlib.util.find_spec("cmwq._cmwq")
    assert spec is not None and spec.origin is not None
    assert ".abi3." in os.path.basename(spec.origin), spec.origin


def test_public_names_exist():
    for name in cmwq.__all__:
        assert getattr(cmwq, name) is not None, name
    assert "system_wq" in dir(cmwq)


def test_docstrings():
    assert cmwq.__doc__ and cmwq.Workqueue.__doc__ and cmwq.Workqueue.submit.__doc__
    assert _cmwq.Runtime.__doc__ and _cmwq.blocking.__doc__
