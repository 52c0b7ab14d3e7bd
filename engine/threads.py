"""Real OS threads and the primitives they share, also in a process eventlet has patched.

Why this module exists: cinder-backup (eventlet mode, its default) monkey-patches
``threading`` and ``queue`` process-wide, so a ``ThreadPoolExecutor`` or ``threading.Lock``
made by the engine would be a green thread or a green lock. The native kernels release the
GIL, but green threads all run inside one OS thread: the data path would use about one
core. Worse, a green lock or event shared between two OS threads is not safe (its waiters
are woken through the hub of the thread that releases it, not of the one that waits).

So the data path takes its threads, pools, locks, events and thread-locals from here:
built from eventlet's ``patcher.original(...)`` modules when (and only when) eventlet has
monkey-patched ``thread``, from the standard library otherwise. The engine never imports
eventlet into a process that has not: it looks for ``eventlet.patcher`` in ``sys.modules``
(only inside a :func:`green_scope` of a patched process does it take ``eventlet.queue``); a
process that never imported eventlet gets exactly the standard library's primitives.

One rule for callers: these primitives block the OS thread. A greenthread on eventlet's
hub must not wait on them (``Future.result()``, ``Event.wait()``, a contended ``Lock``)
for long, or every other greenthread stalls: it polls instead (``Event.is_set()`` between
cooperative sleeps), as the Cinder driver does. The pool's ``Future`` is therefore ours
(a ``concurrent.futures.Future`` holds a patched condition), with the subset of its API the
engine uses: ``result``, ``exception``, ``done``, ``cancel``, ``set_result``,
``set_exception``.

The exception is a store that talks HTTP through libraries eventlet has patched (Swift,
S3): their pools and locks are green and cannot be shared between OS threads. Its requests
run on a :class:`HubThread` (``engine/store/onhub.py`` hands them over), inside
:func:`green_scope`, where every primitive made is eventlet's and the request's own threads
are greenthreads of that one OS thread; the data path keeps its OS threads.

Shared leaf: imports nothing of the engine.
"""

from __future__ import annotations

import posix
import queue as _std_queue
import sys
import threading as _std_threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager, suppress
from types import ModuleType
from typing import Any

__all__ = [
    "Condition",
    "Event",
    "Future",
    "HubThread",
    "Lock",
    "RLock",
    "Thread",
    "ThreadPool",
    "eventlet_patched",
    "get_native_id",
    "green_scope",
    "in_green_scope",
    "os_event",
    "os_thread",
    "local",
    "wants_hub_call",
]


def eventlet_patched() -> bool:
    """True when eventlet (already imported by someone else) has patched ``thread``."""
    patcher = sys.modules.get("eventlet.patcher")
    return patcher is not None and bool(patcher.is_monkey_patched("thread"))


#: OS threads inside :func:`green_scope` (kernel thread ids): primitives made there are
#: eventlet's.
_green_os_threads: set[int] = set()


def _os_threading() -> ModuleType:
    """The ``threading`` of the OS whatever the scope (eventlet's original when patched)."""
    if eventlet_patched():
        return sys.modules["eventlet.patcher"].original("threading")
    return _std_threading


def in_green_scope() -> bool:
    """True in an OS thread inside :func:`green_scope` (its greenthreads included): only
    there may the engine yield to eventlet's hub. Elsewhere a patched ``time.sleep`` would
    give the OS thread a hub and a greenlet state of its own, which greenlet tears down
    when the thread ends with a scan of the whole heap (``gc.get_referrers``): tens of
    milliseconds per thread in a cinder-backup process."""
    return bool(_green_os_threads) and _os_threading().get_native_id() in _green_os_threads


def _threading() -> ModuleType:
    """The ``threading`` module whose primitives are the OS's (eventlet's in a green scope)."""
    if eventlet_patched():
        return sys.modules["threading"] if in_green_scope() else _os_threading()
    return _std_threading


def _simple_queue() -> Any:
    if eventlet_patched():
        if in_green_scope():
            import importlib

            return importlib.import_module("eventlet.queue").LightQueue()
        return sys.modules["eventlet.patcher"].original("queue").SimpleQueue()
    return _std_queue.SimpleQueue()


@contextmanager
def green_scope() -> Iterator[None]:
    """While inside, the threads, pools, locks and events this OS thread makes (and the
    greenthreads those start) are eventlet's green ones: the whole job stays in this one OS
    thread, on its own hub.

    For a job whose store speaks HTTP through libraries eventlet has patched (swiftclient,
    boto3): their connection pools and locks are green, and a green lock or socket shared
    by two OS threads fails ("Cannot switch to a different thread") or hangs. Outside
    eventlet this does nothing.
    """
    if not eventlet_patched():
        yield
        return
    me = _os_threading().get_native_id()
    if me in _green_os_threads:  # nested: the outer scope owns it
        yield
        return
    _green_os_threads.add(me)
    try:
        yield
    finally:
        _green_os_threads.discard(me)


def Lock() -> Any:  # noqa: N802 - a factory standing in for threading.Lock
    """A lock of the OS."""
    return _threading().Lock()


def RLock() -> Any:  # noqa: N802
    """A re-entrant lock of the OS."""
    return _threading().RLock()


def Condition(lock: Any = None) -> Any:  # noqa: N802
    """A condition variable over a lock of the OS."""
    return _threading().Condition(lock)


def Event() -> Any:  # noqa: N802
    """An event an OS thread can wait on (a greenthread on the hub polls ``is_set()``)."""
    return _threading().Event()


def local() -> Any:
    """Storage per OS thread."""
    return _threading().local()


def Thread(  # noqa: N802
    target: Callable[..., Any], name: str | None = None, *, args: tuple = (), daemon: bool = True
) -> Any:
    """A thread of the OS (daemon unless told: an owner joins what it started)."""
    return _threading().Thread(target=target, name=name, args=args, daemon=daemon)


def os_thread(target: Callable[..., Any], name: str | None = None) -> Any:
    """A thread of the OS, also inside a :func:`green_scope` (a job's own thread)."""
    return _os_threading().Thread(target=target, name=name, daemon=True)


def os_event() -> Any:
    """An event of the OS, also inside a :func:`green_scope` (set by another OS thread)."""
    return _os_threading().Event()


def get_native_id() -> int:
    """The kernel's id of the calling OS thread (the same for every greenthread in it)."""
    return _os_threading().get_native_id()


_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)


class Future:
    """The outcome of work on a :class:`ThreadPool` (or set by hand): ``result()`` waits
    on a condition of the OS, so a worker in another OS thread can complete it."""

    __slots__ = ("_cond", "_state", "_value", "_error")

    def __init__(self) -> None:
        self._cond = Condition(Lock())
        self._state = _PENDING
        self._value: Any = None
        self._error: BaseException | None = None

    def _start(self) -> bool:
        """Mark running; False when it was cancelled first (the work is then skipped)."""
        with self._cond:
            if self._state == _CANCELLED:
                return False
            self._state = _RUNNING
            return True

    def cancel(self) -> bool:
        """Cancel work that has not started; True when it will not run."""
        with self._cond:
            if self._state in (_RUNNING, _FINISHED):
                return False
            self._state = _CANCELLED
            self._cond.notify_all()
            return True

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def done(self) -> bool:
        return self._state in (_CANCELLED, _FINISHED)

    def set_result(self, value: Any) -> None:
        with self._cond:
            self._value = value
            self._state = _FINISHED
            self._cond.notify_all()

    def set_exception(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._state = _FINISHED
            self._cond.notify_all()

    def _wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._cond.wait_for(self.done, timeout):
                raise TimeoutError(f"the work did not finish within {timeout} s")
        if self._state == _CANCELLED:
            raise CancelledError()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait; the exception the work raised, or None."""
        self._wait(timeout)
        return self._error

    def result(self, timeout: float | None = None) -> Any:
        """Wait; the work's value, or raise what it raised."""
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._value


class ThreadPool:
    """Up to ``max_workers`` OS threads running submitted work in order of submission; the
    part of ``concurrent.futures.ThreadPoolExecutor`` the engine uses (``submit``, ``map``,
    ``shutdown(wait, cancel_futures)``, ``with``). Threads start on demand, up to the limit.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "cb-pool") -> None:
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive integer, not {max_workers!r}")
        self._max = max_workers
        self._prefix = thread_name_prefix
        self._queue = _simple_queue()
        self._lock = Lock()
        self._threads: list[Any] = []
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new work after the pool was shut down")
            self._queue.put((future, fn, args, kwargs))
            if len(self._threads) < self._max:
                t = Thread(self._work, f"{self._prefix}_{len(self._threads)}")
                self._threads.append(t)
                t.start()
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        """Results in order; all the work is submitted first."""
        futures = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]

        def results() -> Iterator[Any]:
            for f in futures:
                yield f.result()

        return results()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            del item
            if not future._start():
                continue
            value = None
            try:
                value = fn(*args, **kwargs)
            except BaseException as e:  # the future carries it to whoever waits
                future.set_exception(e)
            else:
                future.set_result(value)
            del future, fn, args, kwargs, value

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more work; queued work is cancelled when ``cancel_futures``, else it runs.
        ``wait``: return once every thread ended."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    while True:
                        try:
                            item = self._queue.get_nowait()
                        except _std_queue.Empty:
                            break
                        if item is not None:
                            item[0].cancel()
                for _ in self._threads:
                    self._queue.put(None)
            threads = list(self._threads)
        if wait:
            for t in threads:
                t.join()

    def __enter__(self) -> ThreadPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)


class HubThread:
    """One OS thread with an eventlet hub of its own, running calls other OS threads hand
    it: how OS threads use a client eventlet has patched (swiftclient, boto3).

    Such a client's sockets, pools and locks are green, and green primitives shared by two
    OS threads hang or fail ("Cannot switch to a different thread"). Confining the whole job
    to one green OS thread (:func:`green_scope`) is safe but puts the data path's hashing,
    compression and decompression on one core. Here only the requests are confined: every
    call runs in a greenthread of this thread (inside :func:`green_scope`, so the pools the
    client makes are green too), many at once, their network waits overlapping, while the
    caller's OS thread waits on an event of the OS. The hand-over is a deque and a pipe whose
    read end the hub waits on; nothing of the caller's thread ever touches a hub.

    The thread starts on the first call and lives as long as the process (a daemon): a hub
    thread that ends costs greenlet a scan of the heap on the main thread (``oscalls.py``).
    Only for a process eventlet has patched; :meth:`call` from a thread that has a hub of
    its own (``wants_hub_call`` is False there) would block that hub and must not be made.
    """

    def __init__(self, name: str = "cb-hub") -> None:
        self._name = name
        self._items: deque[tuple[Callable[..., Any], tuple, dict, list, Any]] = deque()
        self._rfd, self._wfd = posix.pipe()
        posix.set_blocking(self._rfd, False)
        posix.set_blocking(self._wfd, False)
        self._thread: Any = None
        self._start_lock = _os_threading().Lock()
        self._failed: BaseException | None = None
        self.native_id: int | None = None

    def _serve(self) -> None:
        import importlib

        eventlet = importlib.import_module("eventlet")
        hubs = importlib.import_module("eventlet.hubs")
        try:
            with green_scope():
                self.native_id = get_native_id()
                while True:
                    hubs.trampoline(self._rfd, read=True)
                    try:
                        while posix.read(self._rfd, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    while self._items:
                        eventlet.spawn_n(self._run, self._items.popleft())
        except BaseException as e:  # the hub itself failed: nobody may wait for it forever
            self._failed = RuntimeError(
                f"the store's request thread {self._name} failed ({type(e).__name__}: {e}); "
                "restart the service"
            )
            self._fail_pending()

    def _fail_pending(self) -> None:
        while True:
            try:
                _fn, _args, _kwargs, box, done = self._items.popleft()
            except IndexError:
                return
            box.append((False, self._failed))
            done.set()

    @staticmethod
    def _run(item: tuple[Callable[..., Any], tuple, dict, list, Any]) -> None:
        fn, args, kwargs, box, done = item
        try:
            box.append((True, fn(*args, **kwargs)))
        except BaseException as e:  # handed to the caller's thread
            box.append((False, e))
        finally:
            done.set()

    def call(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on the hub thread; its value, or raise what it raised."""
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    t = _os_threading().Thread(target=self._serve, name=self._name, daemon=True)
                    t.start()
                    self._thread = t
        done = _os_threading().Event()
        box: list[tuple[bool, Any]] = []
        self._items.append((fn, args, kwargs, box, done))
        # A full pipe holds wake-ups already; a broken one has no hub behind it (below).
        with suppress(OSError):
            posix.write(self._wfd, b"!")
        if self._failed is not None:  # no hub left to run it
            self._fail_pending()
        done.wait()
        ok, value = box[0]
        if ok:
            return value
        raise value


def wants_hub_call() -> bool:
    """True on an OS thread of a patched process that has no hub of its own: not in a
    :func:`green_scope` and not the main thread (where eventlet's hub and cinder-backup's
    greenthreads run). A patched client's calls from such a thread go to a
    :class:`HubThread`."""
    if not eventlet_patched() or in_green_scope():
        return False
    os_threading = _os_threading()
    return os_threading.get_native_id() != os_threading.main_thread().native_id
