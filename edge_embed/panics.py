"""Keeps the tokenizers library's Rust panic reports off stderr; everything else still gets there.

A crafted or broken ``tokenizer.json`` can make the Rust code inside ``tokenizers`` panic.
pyo3 turns the panic into a Python ``PanicException``, which edge-embed turns into its own
one-line BundleError / InputError; but Rust's panic hook has already written its report
(and, with ``RUST_BACKTRACE`` set, a backtrace) straight to file descriptor 2, where neither
Python nor the library lets anyone switch it off.

So :func:`quiet_panics` points fd 2 at a scratch file while a tokenizer call runs, then puts
it back and writes what was captured to the real stderr, less the panic reports. Calls in
several threads share one redirection (the first one in sets it up, the last one out
replays), so other threads' stderr output during a call is delayed by the call, never lost.
Deliberately does not touch anything when fd 2 cannot be duplicated (a closed stderr).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import IO

__all__ = ["quiet_panics", "without_panic_reports"]

_HEADER = re.compile(rb"^thread '[^\n]*' (?:\(\d+\) )?panicked at ")
_FRAME = re.compile(rb"^\s+(?:\d+: |at )")
_lock = threading.Lock()
_active: set[object] = set()  # one token per tokenizer call in flight, in any thread
_saved: int | None = None  # the real stderr while fd 2 points at the scratch file
_scratch: IO[bytes] | None = None
_scratch_pid = 0


def without_panic_reports(data: bytes) -> bytes:
    """``data`` less Rust panic reports: the "thread '...' panicked at" line, its message, an
    optional backtrace, and the closing "note:" line (and the blank line Rust puts before it)."""
    out: list[bytes] = []
    lines = data.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if not _HEADER.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        if out and out[-1].strip() == b"":
            out.pop()
        nxt = next((j for j in range(i + 1, len(lines)) if _HEADER.match(lines[j])), len(lines))
        end = next((j for j in range(i + 1, nxt) if lines[j].startswith(b"note: ")), None)
        if end is None:  # no closing note (RUST_BACKTRACE=full): the message line, then any frames
            end = i + 1
            if end + 1 < len(lines) and lines[end + 1].startswith(b"stack backtrace:"):
                end += 1
                while end + 1 < len(lines) and _FRAME.match(lines[end + 1]):
                    end += 1
        i = end + 1
    return b"".join(out)


def _enter(tok: object) -> None:
    """Register a call; the first one in points fd 2 at the scratch file. The token is
    registered before anything changes, so a signal arriving anywhere in here leaves a state
    that _leave(tok) restores."""
    global _saved, _scratch, _scratch_pid
    with _lock:
        _active.add(tok)
        if _saved is not None:
            return
        try:
            saved = os.dup(2)
        except OSError:  # a closed stderr: leave it alone
            _active.discard(tok)
            return
        if _scratch is None or _scratch_pid != os.getpid():  # a forked child gets its own file
            _scratch, _scratch_pid = tempfile.TemporaryFile(prefix="edge-embed-stderr-"), os.getpid()
        with contextlib.suppress(Exception):
            sys.stderr.flush()  # what Python buffered so far belongs before the call's output
        _saved = saved
        os.dup2(_scratch.fileno(), 2)


def _leave(tok: object) -> None:
    """Unregister a call; the last one out puts fd 2 back and replays what it caught, less
    panic reports. Idempotent, so it can be retried when a signal interrupts it."""
    global _saved
    with _lock:
        _active.discard(tok)
        if _active or _saved is None or _scratch is None:
            return
        with contextlib.suppress(Exception):
            sys.stderr.flush()  # Python's own writes during the call are in the scratch file too
        os.dup2(_saved, 2)  # first: a retry after an interruption here only repeats it
        saved, _saved = _saved, None
        os.close(saved)
        _scratch.seek(0)
        data = _scratch.read()
        _scratch.seek(0)
        _scratch.truncate()
    rest = without_panic_reports(data) if b"panicked at" in data else data
    with contextlib.suppress(OSError):
        while rest:
            rest = rest[os.write(2, rest):]


@contextlib.contextmanager
def quiet_panics() -> Iterator[None]:
    """Run a tokenizer call with Rust's panic reports kept off stderr (see the module doc).

    Ctrl-C during a long tokenizer call is delivered as the call returns, which can be inside
    the way out: stderr is put back first (retrying _leave), then the signal's exception is
    raised, so an interrupted run never leaves fd 2 pointing at the scratch file."""
    tok = object()
    try:
        _enter(tok)
        yield
    finally:
        pending: BaseException | None = None
        for _ in range(100):  # each retry needs another signal to fail: a bound, not a loop forever
            try:
                _leave(tok)
                break
            except BaseException as e:
                pending = e
        if pending is not None:
            raise pending
