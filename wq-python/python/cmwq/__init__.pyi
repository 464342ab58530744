"""Type stubs for cmwq: kernel-style workqueues as concurrent.futures executors."""

import sys
from concurrent.futures import Executor, Future
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, TypeVar, Union

from ._cmwq import (
    CPU_INTENSIVE as CPU_INTENSIVE,
    FREEZABLE as FREEZABLE,
    HIGHPRI as HIGHPRI,
    MAX_ACTIVE_LIMIT as MAX_ACTIVE_LIMIT,
    MEM_RECLAIM as MEM_RECLAIM,
    POWER_EFFICIENT as POWER_EFFICIENT,
    UNBOUND as UNBOUND,
    Runtime as Runtime,
    blocking as blocking,
    dump as dump,
    is_worker_thread as is_worker_thread,
)

if sys.version_info >= (3, 10):
    from typing import ParamSpec
else:
    from typing_extensions import ParamSpec

_T = TypeVar("_T")
_P = ParamSpec("_P")

class Workqueue(Executor):
    def __init__(
        self,
        name: str,
        flags: int = 0,
        max_active: int = 0,
        ordered: bool = False,
        *,
        runtime: Optional[Runtime] = None,
    ) -> None: ...
    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]: ...
    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: Optional[float] = None,
        chunksize: int = 1,
    ) -> Iterator[_T]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...
    def flush(self) -> None: ...
    def stats(self) -> Dict[str, Union[int, float, str]]: ...
    async def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T: ...
    @property
    def name(self) -> str: ...
    @property
    def flags(self) -> int: ...
    @property
    def max_active(self) -> int: ...
    @property
    def runtime(self) -> Runtime: ...

system_wq: Workqueue
system_highpri_wq: Workqueue
system_long_wq: Workqueue
system_unbound_wq: Workqueue
system_freezable_wq: Workqueue
system_power_efficient_wq: Workqueue
