"""Run a call under a wall-clock limit in a forked child process.

ALFWorld's planner (fast-downward, called through ctypes) cannot be interrupted from Python: a signal is handled
only after the C call returns, and one training game (``pick_two_obj_and_place-PepperShaker-None-Cabinet-8``)
kept it busy for more than nine minutes where the other 108 of a 120-game sample took at most 75 s.  So the call
runs in a forked copy of the process, which is killed when the limit passes.  The result comes back as JSON
over a pipe (no pickle); the parent's state is never touched by the child, so its loaded game stays as it was.
Linux/macOS only (``fork``); the child must not use resources it shares with the parent (a JVM socket, say).
"""
from __future__ import annotations

import json
import multiprocessing
import os
from typing import Any, Callable


class TimeLimitExceeded(RuntimeError):
    """The call ran past its limit (the child was killed)."""


def call_with_time_limit(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()`` computed in a forked child and returned if it finishes within ``seconds``; its result must be
    JSON-serializable.  Raises :class:`TimeLimitExceeded` past the limit, and ``RuntimeError`` naming the
    child's exception when ``fn`` raised (or when the child died without an answer)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            payload = {"ok": fn()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
            payload = {"error": f"{type(exc).__name__}: {exc}"}
        send.send_bytes(json.dumps(payload).encode())
        send.close()
        os._exit(0)  # no atexit handlers of the parent's (JVM gateways, temp dirs) run in the copy

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(seconds):
            raise TimeLimitExceeded(f"still running after {seconds:g} s (stopped)")
        try:
            payload = json.loads(recv.recv_bytes().decode())
        except EOFError:
            raise RuntimeError(f"the child process died without an answer (exit code {proc.exitcode})") from None
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
        proc.join()
    if "error" in payload:
        raise RuntimeError(payload["error"])
    return payload["ok"]
