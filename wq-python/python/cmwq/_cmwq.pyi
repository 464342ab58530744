"""Native core of the cmwq package (use ``cmwq``, not this module)."""

from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union

_T = TypeVar("_T")

HIGHPRI: int
CPU_INTENSIVE: int
UNBOUND: int
FREEZABLE: int
MEM_RECLAIM: int
POWER_EFFICIENT: int
MAX_ACTIVE_LIMIT: int
SIGNAL_CHECK_INTERVAL: float

class Runtime:
    def __init__(
        self,
        cpus: Optional[Sequence[int]] = None,
        *,
        idle_timeout: Optional[float] = None,
        cpu_hog_threshold: Optional[float] = None,
        max_workers: Optional[int] = None,
        detector: Optional[str] = None,
    ) -> None: ...
    @staticmethod
    def global_runtime() -> Runtime: ...
    @property
    def cpus(self) -> List[int]: ...
    def dump(self) -> str: ...
    def stats(self) -> List[Dict[str, Union[int, str, bool, None]]]: ...

class _Queue:
    def __init__(
        self,
        name: str,
        flags: int = 0,
        max_active: int = 0,
        ordered: bool = False,
        runtime: Optional[Runtime] = None,
    ) -> None: ...
    @staticmethod
    def system(name: str) -> _Queue: ...
    def submit(
        self,
        func: Callable[..., Any],
        args: Tuple[Any, ...],
        kwargs: Optional[Dict[str, Any]],
        future: Future[Any],
    ) -> None: ...
    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...
    def flush(self) -> None: ...
    def stats(self) -> Dict[str, Union[int, float, str]]: ...
    @property
    def name(self) -> str: ...
    @property
    def flags(self) -> int: ...
    @property
    def max_active(self) -> int: ...
    @property
    def is_system(self) -> bool: ...
    @property
    def is_shutdown(self) -> bool: ...
    @property
    def runtime(self) -> Runtime: ...

def blocking(func: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T: ...
def is_worker_thread() -> bool: ...
def dump() -> str: ...
def _python_exit() -> None: ...
