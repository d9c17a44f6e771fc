"""What model code may do to a run, and how the run outlives it.

- ``sys.exit`` / ``SystemExit``, a ``KeyboardInterrupt`` the model raised itself, and a check over
  its time limit become an ERROR row (``escape_detail``); only the user's own Ctrl-C (or SIGTERM in
  the CLI's worker) stops the run. The user's interrupt is told apart by the SIGINT handler that
  ``user_interrupts`` installs: it marks the interrupt before raising.
- ``check_limit``: a per-check time limit. SIGALRM raises ``CheckTimeout`` inside the check at the
  next bytecode (and cuts short sleeps and socket waits); it repeats every half second, so code that
  swallows it is interrupted again. Code stuck inside one C call is ended by the CLI's supervisor.
- ``caller_state``: the caller's random states (python, numpy, torch), torch globals (default dtype,
  grad mode, deterministic flags), working folder and the builtins a model may replace are put back
  as they were.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType, ModuleType
from typing import Any, Optional, Union

ENV = "TBKIT_CHECK_TIMEOUT"
DEFAULT_CHECK_TIMEOUT_S = 1800.0  # a large model's slowest check on a CPU fits well inside
_BUILTINS = ("open", "print", "input", "__import__", "exit", "quit")

# what signal.signal takes and returns (typeshed's signal._HANDLER)
_SignalHandler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]
# the saved torch module and its globals (``_torch_globals``)
_TorchState = tuple[ModuleType, dict[str, Any]]


class CheckTimeout(BaseException):
    """Raised inside a check over its limit; a BaseException so ``except Exception`` cannot swallow it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"over the time limit of {seconds:g} s")
        self.seconds = seconds


class _State:
    user_interrupt = False
    reason: Optional[str] = None


def resolve_timeout(seconds: Union[float, str, None]) -> Optional[float]:
    """The per-check limit: the argument, else $TBKIT_CHECK_TIMEOUT, else 1800 s; 0 = none."""
    from tbkit.errors import UsageError

    if seconds is None:
        seconds = os.environ.get(ENV, DEFAULT_CHECK_TIMEOUT_S)
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise UsageError(
            f"the check time limit {seconds!r} is not a number of seconds",
            f"Pass e.g. --check-timeout 1800 (or set {ENV}=1800; 0 = no limit).",
        )
    return value or None


def timeout_detail(seconds: float, where: str = "check") -> str:
    return (
        f"the {where} did not finish within the time limit of {seconds:g} s (--check-timeout / {ENV}), so it "
        "was stopped. A forward that sleeps, waits or deadlocks never returns; if the model is just slow on "
        "this machine, raise the limit."
    )


def escape_detail(exc: BaseException) -> Optional[str]:
    """The ERROR detail for a ``BaseException`` that model code raised inside a check, or None when
    it must stop the run (the user's interrupt, or interpreter shutdown)."""
    if isinstance(exc, CheckTimeout):
        return timeout_detail(exc.seconds)
    if isinstance(exc, KeyboardInterrupt):
        if _State.user_interrupt:
            return None
        return (
            "the model code raised KeyboardInterrupt itself (no Ctrl-C was pressed); a check must not end "
            "the run, so this is an error in the model."
        )
    if isinstance(exc, SystemExit):
        return (
            f"the model code called sys.exit({exc.code!r}) (SystemExit) inside the check; a model must not "
            "end the process, so the check is an error and the run went on."
        )
    return None


def user_interrupted() -> bool:
    return _State.user_interrupt


def mark_user_interrupt() -> None:
    _State.user_interrupt = True


@contextlib.contextmanager
def user_interrupts(signals: tuple[int, ...] = (signal.SIGINT,)) -> Iterator[None]:
    """While the run lasts, Ctrl-C (and the other ``signals``, e.g. SIGTERM in the CLI's worker) is
    marked as the user's before it raises KeyboardInterrupt (main thread only; elsewhere every
    KeyboardInterrupt is taken as the user's)."""
    _State.user_interrupt, _State.reason = False, None
    if threading.current_thread() is not threading.main_thread():
        _State.user_interrupt = True
        yield
        return
    saved: dict[int, _SignalHandler] = {}
    for signum in signals:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_IGN:  # e.g. a background job: nothing to mark
            continue
        saved[signum] = previous
        signal.signal(signum, _handler(signum, previous))
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)


def _handler(signum: int, previous: _SignalHandler) -> Callable[[int, Optional[FrameType]], None]:
    name = signal.Signals(signum).name

    def on_signal(sig: int, frame: Optional[FrameType]) -> None:
        _State.user_interrupt = True
        _State.reason = _State.reason or ("Ctrl-C (SIGINT)" if name == "SIGINT" else name)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(sig, frame)
        raise KeyboardInterrupt

    return on_signal


def interrupt_reason() -> str:
    return _State.reason or "Ctrl-C (SIGINT)"


class CheckLimit:
    """``with CheckLimit(seconds) as limit:`` raises ``CheckTimeout`` in the body after ``seconds``
    (main thread with SIGALRM only; elsewhere no limit). ``pause()``/``resume()`` stop the clock while
    the runner stores a row, so the exception never lands in the report's own writing."""

    def __init__(self, seconds: Optional[float]) -> None:
        self.seconds = seconds
        self.usable = bool(
            seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
        )
        self.remaining = seconds or 0.0
        self.previous: _SignalHandler = None

    def _expire(self, signum: int, frame: Optional[FrameType]) -> None:
        raise CheckTimeout(float(self.seconds or 0))

    def __enter__(self) -> CheckLimit:
        if self.usable:
            self.previous = signal.signal(signal.SIGALRM, self._expire)
            self.resume()
        return self

    def pause(self) -> None:
        if self.usable:
            left, _ = signal.setitimer(signal.ITIMER_REAL, 0)
            self.remaining = left if left > 0 else 0.001

    def resume(self) -> None:
        if self.usable:
            signal.setitimer(signal.ITIMER_REAL, self.remaining, 0.5)  # repeats: swallowing it does not help

    def __exit__(self, *exc: object) -> None:
        if self.usable:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous if self.previous is not None else signal.SIG_DFL)


def _torch_globals() -> Optional[_TorchState]:
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    state = {
        "dtype": torch.get_default_dtype(),
        "grad": torch.is_grad_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }
    return torch, state


def _restore_torch(saved: _TorchState) -> None:
    torch, state = saved
    torch.set_default_dtype(state["dtype"])
    torch.set_grad_enabled(state["grad"])
    torch.use_deterministic_algorithms(state["deterministic"], warn_only=state["warn_only"])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = state["cudnn"]
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None:
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def _numpy_state() -> Optional[tuple[ModuleType, Any]]:
    import sys

    np = sys.modules.get("numpy")
    return (np, np.random.get_state()) if np is not None else None


@contextlib.contextmanager
def caller_state() -> Iterator[None]:
    """Put back what a run (or the model code it ran) changed in the caller's process."""
    import random

    py_random = random.getstate()
    np_saved = _numpy_state()
    torch_saved = _torch_globals()
    cwd = _cwd()
    kept = {name: getattr(builtins, name, None) for name in _BUILTINS}
    try:
        yield
    finally:
        restore_builtins(kept)
        with contextlib.suppress(OSError, TypeError):
            if cwd is not None:
                os.chdir(cwd)
        random.setstate(py_random)
        np_saved = np_saved or _numpy_state()  # numpy/torch may have been imported by the run itself
        if np_saved is not None:
            np_saved[0].random.set_state(np_saved[1])
        if torch_saved is not None:
            _restore_torch(torch_saved)
        else:
            _torch_defaults_if_loaded()


def _torch_defaults_if_loaded() -> None:
    """torch was first imported during the run: its globals go back to torch's defaults (the
    random state stays as the run left it; the caller had none yet)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_default_dtype(torch.float32)
        torch.set_grad_enabled(True)


def _cwd() -> Optional[str]:
    try:
        return os.getcwd()
    except OSError:
        return None


def snapshot_builtins() -> dict[str, Any]:
    return {name: getattr(builtins, name, None) for name in _BUILTINS}


def restore_builtins(kept: dict[str, Any]) -> None:
    """A model that replaced ``builtins.open`` (or print) must not break the report that follows."""
    for name, value in kept.items():
        if value is not None and getattr(builtins, name, None) is not value:
            setattr(builtins, name, value)
