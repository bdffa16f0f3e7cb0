"""A command owns its process: its stdout carries only its own output, and a signal
stops it cleanly (journalled, workers stopped)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO


@contextlib.contextmanager
def command_stdout() -> Iterator[TextIO]:
    """Yield the stream for the command's own output (a summary, a ``--json`` document);
    anything else written to stdout while the command runs goes to stderr.

    Models and reference codes print on stdout (CHGNet announces its parameter count, C
    libraries write to file descriptor 1), which would break ``--json > out.json``. So the
    real stdout is set aside and descriptor 1, which worker processes inherit, points to
    stderr until the command ends. Where stdout is not a file descriptor (an in-process
    capture), Python-level prints are redirected only.
    """
    ours = sys.stdout
    try:
        fd = ours.fileno()
        err_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    saved = None
    if fd is not None:
        ours.flush()
        saved = os.dup(fd)
        os.dup2(err_fd, fd)
        ours = open(saved, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield ours
    finally:
        ours.flush()
        if saved is not None:
            sys.stdout.flush()
            os.dup2(saved, fd)
            os.close(saved)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`~atomate2_otf.local.RunInterrupted` in the main
    thread, so the runner journals the run as interrupted and :func:`main` stops the chain
    workers; a second signal while that happens acts as the signal's default."""
    import signal
    import threading

    from atomate2_otf.local import RunInterrupted

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        raise RunInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
