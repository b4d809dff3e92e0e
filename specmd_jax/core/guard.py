"""The apps' error policy (:func:`guarded`): input errors print one ``error:`` line and exit 2,
Ctrl-C (or SIGTERM) exits 130 (143) without a manifest, anything else (a bug) keeps its traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

from specmd_jax.core.rundir import OutputError

__all__ = ["guarded", "Terminated", "EXIT_INPUT", "EXIT_INTERRUPT", "EXIT_TERMINATED"]

EXIT_INPUT = 2          # a bad config, trace or output directory
EXIT_INTERRUPT = 130    # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143   # SIGTERM (128 + 15), e.g. a batch scheduler's time limit


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that writes are cleaned up as on Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated


def guarded(fn: Callable[[], Any], input_errors: tuple[type[BaseException], ...] = ()) -> Any:
    """Call ``fn()`` under the apps' error policy: an :class:`OutputError` or one of
    ``input_errors`` prints ``error: <message>`` to stderr and exits 2 (no traceback; the message
    names file, key and value); Ctrl-C exits 130 and SIGTERM 143, each with one line (temporary
    files removed, no manifest); other exceptions (bugs) propagate with their traceback."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _terminate) if main else None
    # Ctrl-C interrupts even when the app was started with SIGINT ignored (a background job of a
    # non-interactive shell inherits SIG_IGN, and Python then never raises KeyboardInterrupt)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler) if main else None
    try:
        return fn()
    except (OutputError, *input_errors) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INPUT) from None
    except (KeyboardInterrupt, Terminated) as e:
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated (SIGTERM)"
        print(f"{what}: no manifest.json written; files already in the run directory are not a complete run",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPT if isinstance(e, KeyboardInterrupt) else EXIT_TERMINATED) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, old)
            signal.signal(signal.SIGINT, old_int)
