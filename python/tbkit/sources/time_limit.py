"""A time limit on importing model code, which never leaves a CLI run hanging.

Why this design (and not a watchdog thread alone, or a subprocess):
- A subprocess pre-check would import the code (and torch) twice and run its side effects twice.
- A watchdog thread cannot interrupt the thread running the import. So on Unix, in the main
  thread (the CLI, and a notebook kernel's cells), a SIGALRM timer raises ``_Expired`` inside the
  import at the next bytecode, and also cuts short ``time.sleep``, socket waits and other
  interruptible system calls (PEP 475). The timer repeats every half second, so code that
  swallows the first exception (``except BaseException: pass``) is interrupted again.
- Elsewhere (a worker thread, Windows) the watchdog raises ``_Expired`` in the loading thread
  with ``PyThreadState_SetAsyncExc``: also at the next bytecode.
- Neither reaches code stuck inside one C call that holds the GIL (e.g.
  ``sum(itertools.repeat(1, 10**13))``): no Python thread can even run then. `tbkit run` runs the
  model in a worker process that its supervisor (cli/_supervise.py) kills after the load limit
  plus a grace, with one paragraph. A process that owns itself and has no supervisor can set
  ``exit_process_when_stuck`` to get a forked watchdog that, ``GRACE_S`` after the limit, prints the
  message and kills it (exit status 137). A notebook is never ended; there the limit is best
  effort, as documented.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Optional, Union

from tbkit.errors import SourceError

DEFAULT_S = 60.0
ENV = "TBKIT_IMPORT_TIMEOUT"
GRACE_S = 3.0
exit_process_when_stuck = False  # for a process that owns itself and has no supervisor


class _Expired(BaseException):
    """Raised inside the model code; a BaseException so that ``except Exception`` cannot swallow it."""


def resolve(seconds: Union[float, str, None]) -> Optional[float]:
    """The limit in seconds: the argument, else $TBKIT_IMPORT_TIMEOUT, else 60; 0 or None-ish → no limit."""
    if seconds is None:
        seconds = os.environ.get(ENV, DEFAULT_S)
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise SourceError(
            f"the import time limit {seconds!r} is not a number of seconds", f"Pass e.g. 60 (or set {ENV}=60)."
        ) from None
    if value < 0 or value != value:
        raise SourceError(f"the import time limit {value:g} is negative", "Pass a positive number of seconds.")
    return value or None


def _message(label: str, seconds: float) -> SourceError:
    return SourceError(
        f"importing {label} did not finish within the time limit of {seconds:g} s (a training loop, a download "
        "or a large computation at top level?), so it was stopped",
        'Move work that is not defining the model under `if __name__ == "__main__":`, or raise the limit with '
        f"import_timeout= / --import-timeout SECONDS (or {ENV}).",
    )


@contextlib.contextmanager
def limit(seconds: Optional[float], label: str) -> Iterator[None]:
    """Run the body under the limit; SourceError when it expires (also when the code swallowed
    the interruption and finished late)."""
    if not seconds:
        yield
        return
    done = threading.Event()
    fired: list[Union[int, str]] = []  # the signal number, or "watchdog"
    use_alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    _start_watchdog(seconds, label, done, None if use_alarm else threading.get_ident(), fired)

    def expire(signum: int, frame: Optional[FrameType]) -> None:
        fired.append(signum)
        raise _Expired()

    previous = signal.signal(signal.SIGALRM, expire) if use_alarm else None
    try:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
        try:
            yield
        finally:
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
            done.set()
    except _Expired:
        raise _message(label, seconds) from None
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
    if fired:
        raise _message(label, seconds)


def _start_watchdog(
    seconds: float, label: str, done: threading.Event, thread_id: Optional[int], fired: list[Union[int, str]]
) -> None:
    def watch() -> None:
        if done.wait(seconds):
            return
        if thread_id is not None:
            fired.append("watchdog")
            _async_raise(thread_id)

    threading.Thread(target=watch, name="tbkit-import-limit", daemon=True).start()
    if exit_process_when_stuck and hasattr(os, "fork"):
        _fork_killer(seconds + GRACE_S, f"tbkit: {_message(label, seconds)}\n".encode(), done)


def _fork_killer(deadline: float, message: bytes, done: threading.Event) -> None:
    """A child process that kills this one if ``done`` is not set by ``deadline`` seconds. It
    runs only os-level calls (this process may hold locks in other threads when it forks)."""
    import select

    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: wait for the pipe to close (done) or the deadline
        os.close(write_end)
        ready, _, _ = select.select([read_end], [], [], deadline)
        if not ready:
            os.write(2, message)
            os.kill(parent, signal.SIGKILL)
        os._exit(0)
    os.close(read_end)

    def release() -> None:
        done.wait()
        os.close(write_end)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    threading.Thread(target=release, name="tbkit-import-limit-release", daemon=True).start()


def _async_raise(thread_id: int) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(_Expired))
