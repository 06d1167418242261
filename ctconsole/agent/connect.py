"""The one handshake with a destination agent: start it, say hello, check the protocol, or explain why not.

Why one function: the console's ``--host`` view, the feasibility check's
destination probe, the migration engine and crash recovery all open the
same kind of session. Written four times, the four copies drifted (one
checked nothing, one killed the agent, one gave hints, one did not); here
every caller gets the same checks and, when the agent cannot be reached,
the same :class:`Unreachable` error: the cause, the agent's stderr tail and
a hint for that kind of destination (:func:`unreachable_hints`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ctconsole.agent.channel import PROTOCOL_VERSION, AgentChannel, ChannelError, Destination, parse_destination
from ctconsole.errors import CtError
from ctconsole.proto import agent_pb2

HELLO_TIMEOUT = 60.0


class Unreachable(ChannelError):
    """The agent on a destination could not be started, or its hello failed (message names the host)."""

    def __init__(self, dest: Destination, cause: str, details: list[str]) -> None:
        super().__init__(f"cannot reach the agent on {dest}", [cause, *details, *unreachable_hints(dest)])
        self.dest = dest
        self.reasons = [cause, *details]  # what went wrong (cause first), without the hints
        self.hints = unreachable_hints(dest)


def unreachable_hints(dest: Destination) -> list[str]:
    """What to try, by kind of destination (shown after the agent's own words)."""
    if dest.kind == "netns":
        return [f"Does the namespace exist? `ip netns list` should show {dest.name}, and ctconsole must run in it."]
    if dest.kind == "ssh":
        return [
            "ssh runs with BatchMode=yes: a key must log in without a prompt (CTCONSOLE_SSH_OPTS adds options).",
            "ctconsole must be installed there (CTCONSOLE_REMOTE_CMD names the command).",
        ]
    return []


def connect(
    dest: Destination | str,
    *,
    log_dir: Path | None = None,
    timeout: float = HELLO_TIMEOUT,
    cpuinfo: bytes = b"",
    should_abort: Callable[[], bool] | None = None,
    started: AgentChannel | None = None,
) -> tuple[AgentChannel, Any]:
    """Start the agent for ``dest`` and say hello: ``(channel, HelloReply)``; the caller closes the channel.

    ``cpuinfo`` (the source's ``cpuinfo.img``) makes the agent run CPUINFO_CHECK
    in the same round trip. ``should_abort`` is polled while waiting (the
    engine's abort). A malformed ``dest`` string raises UsageError; any failure
    to start the agent, a broken or refused hello, or an agent that speaks
    another protocol raises :class:`Unreachable`, and no agent is left running.
    ``started``: a channel for ``dest`` already started (:meth:`AgentChannel.start`) by a caller that
    had local work to do while ssh connects and the agent imports (the engine); hello goes on it.
    """
    d = parse_destination(dest) if isinstance(dest, str) else dest
    ch = started if started is not None else AgentChannel(d, log_dir=log_dir)
    if should_abort is not None:
        ch.should_abort = should_abort
    try:
        if started is None:
            ch.start()
        hello = ch.call("hello", agent_pb2.Hello(protocol=PROTOCOL_VERSION, cpuinfo_img=cpuinfo), timeout=timeout)
        if hello.protocol != PROTOCOL_VERSION:
            raise CtError(f"the agent speaks protocol {hello.protocol}, this console {PROTOCOL_VERSION}",
                          ["install the same ctconsole version on both hosts"])
    except CtError as exc:
        tail = [t for t in ch.stderr_tail() if t not in exc.details]
        ch.kill()
        ch.close(timeout=2)
        if ch.should_abort():
            raise  # the operator's abort, not an unreachable host
        raise Unreachable(d, exc.message, [*exc.details, *tail]) from exc
    return ch, hello
