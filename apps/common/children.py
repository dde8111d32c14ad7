"""Apps that run other apps as child processes (the figures app, the robustness sweep): start, stop, wait.

A child can never outlive its parent, however the parent ends: it asks the kernel for SIGTERM when the
parent dies (``preexec_fn``: :func:`core.parallel.parent_death_preexec`; the thread that starts a child is
the one that waits for it, so it outlives the child as the death signal needs). Within
:func:`stop_requests` SIGTERM and SIGINT only record a stop request, and the signal is passed on to every
running child once. The children run in a session of their own, so that a signal reaches them only this way:
a Ctrl-C at the terminal (SIGINT to the foreground process group) and ``kill -INT <pid>`` of this process alone
stop them alike, and none gets a second signal from the group, which would cut its checkpoint short (an app
raises KeyboardInterrupt again on a second SIGINT or SIGTERM). The children checkpoint (every training app
handles SIGTERM as Ctrl-C) and are waited for; killing them would lose their checkpoints. No new child starts
once a stop was requested.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager


class StopRequest:
    """Whether this process was told to stop (SIGTERM or Ctrl-C) while it runs children, and by which signal
    (the one passed on to them: a child sees what a child of the terminal would have seen)."""

    requested = False
    signum = signal.SIGTERM


@contextmanager
def stop_requests():
    """Within the block SIGTERM and SIGINT only record a stop request (:func:`run_children` passes it on to the
    running children), so that no KeyboardInterrupt can land between a child's end and the record of its status;
    elsewhere than in the main thread, where no handler can be installed, they keep their handlers. An ignored
    SIGINT (a background job of a non-interactive shell) stays ignored."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request(signum, frame):
        if not stop.requested:
            stop.requested, stop.signum = True, signum

    watched = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    previous = {s: signal.signal(s, request) for s in watched}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_app(command: list[str], stop: StopRequest) -> int | None:
    """Run ``command`` to its end as a child process that cannot outlive this one; its exit status (None if a
    stop request came before it started)."""
    return run_children({0: command}, stop, parallel=1).get(0)


HELD = {signal.SIGINT, signal.SIGTERM}


def _start(command: list[str], **popen) -> subprocess.Popen:
    """Popen of a child that unblocks the signals :func:`_signals_held` holds back (a signal mask is inherited
    across exec) and asks for its parent-death signal before it runs, in a session of its own (see the module
    docstring: signals reach it from this process only; a session rather than a process group, so that no
    terminal job control (``stty tostop``) stops a child writing its progress bar to the inherited terminal)."""
    from core.parallel import parent_death_preexec

    death = parent_death_preexec(signal.SIGTERM)

    def preexec():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
        death()

    return subprocess.Popen(command, preexec_fn=preexec, start_new_session=True, **popen)


@contextmanager
def _signals_held():
    """SIGINT and SIGTERM held back in the block (main thread): a Ctrl-C landing inside Popen would lose the
    handle of a child that has already started, which then could not be waited for. A signal that came
    meanwhile is delivered when the block ends, after the handle is stored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def run_children(commands: Mapping, stop: StopRequest, parallel: int = 1,
                 on_done: Callable[[object, int], None] | None = None, on_poll: Callable[[], None] | None = None,
                 log_of: Callable[[object], os.PathLike] | None = None) -> dict:
    """Run the ``{key: command}`` children, at most ``parallel`` at a time, in order; their exit statuses.

    ``on_done(key, status)`` is called as each child ends, ``on_poll()`` every 0.2 s (e.g. to update a progress
    bar); ``log_of(key)``: a file that the child's output (stdout and stderr) is appended to, instead of this
    process's streams. Keys whose child never started because a stop was requested are missing from the result.
    """
    queue = list(commands.items())
    running: dict = {}
    statuses: dict = {}
    forwarded = False
    while queue or running:
        try:
            while queue and len(running) < max(1, int(parallel)) and not stop.requested:
                key, command = queue.pop(0)
                if log_of is None:
                    with _signals_held():
                        running[key] = _start(command)
                else:
                    with open(log_of(key), "ab") as log, _signals_held():  # the child keeps its own descriptor
                        running[key] = _start(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if stop.requested:
                queue.clear()
                if not forwarded:
                    forwarded = True
                    for child in running.values():
                        child.send_signal(stop.signum)
            for key, child in list(running.items()):
                status = child.poll()
                if status is not None:
                    del running[key]
                    statuses[key] = status
                    if on_done is not None:
                        on_done(key, status)
            if on_poll is not None:
                on_poll()
            if running:
                time.sleep(0.2)  # polled, so that a stop request is passed on within 0.2 s
        except KeyboardInterrupt:  # outside stop_requests: pass the Ctrl-C on (the children are not in our group)
            if not stop.requested:
                stop.requested, stop.signum = True, signal.SIGINT
    return statuses
