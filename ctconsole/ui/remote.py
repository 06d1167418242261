"""One ``--host`` of the console: a long-lived agent channel and the requests the console sends on it.

Why a persistent channel: the containers screen rescans every 2 s; starting
``ctconsole agent --stdio`` (through ``ip netns exec`` or ssh) for each scan
would cost a process, a Python start-up and an ssh handshake every time. The
channel is opened on first use, reused by every scan, detail and check, and
dropped on the first transport failure so the next call reconnects. Calls are
serialised with a lock because the protocol is one request, one reply, in
order, and the scan worker and a check can run at the same time.

Failures always surface as :class:`~ctconsole.errors.CtError` (``ChannelError``
/ ``AgentError`` are subclasses) whose message names the host, with the
agent's stderr tail as details: the console shows that, never a traceback.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ctconsole.agent.channel import AgentChannel, AgentError, ChannelError, Destination, parse_destination
from ctconsole.agent.connect import connect
from ctconsole.errors import CtError
from ctconsole.model import Container, from_dict
from ctconsole.proto import agent_pb2

#: a full inventory is ~20 ms locally; ssh adds the round trip. Checks run criu check (~1 s).
INVENTORY_TIMEOUT = 30.0
CHECK_TIMEOUT = 120.0
HELLO_TIMEOUT = 60.0


class RemoteHost:
    """The agent on one host, reached the way ``ctconsole migrate`` would reach it."""

    def __init__(self, dest: str) -> None:
        self.dest: Destination = parse_destination(dest)  # UsageError for a malformed --host
        self.name = dest
        self._ch: AgentChannel | None = None
        self._lock = threading.Lock()
        self.hostname = ""
        self.connects = 0  # channels opened (tests: reuse across refreshes means this stays 1)
        self.requests = 0  # requests answered over the channel

    @property
    def connected(self) -> bool:
        ch = self._ch
        return ch is not None and ch.proc is not None and ch.proc.poll() is None

    def _connect(self) -> AgentChannel:
        """Start the agent and say hello (lock held). Raises a CtError naming the host on failure."""
        if self._ch is not None and self.connected:
            return self._ch
        self._drop()
        ch, hello = connect(self.dest, timeout=HELLO_TIMEOUT)  # Unreachable (a CtError) names the host
        self.hostname = str(hello.hostname)
        self.connects += 1
        self._ch = ch
        return ch

    def _drop(self) -> None:
        ch, self._ch = self._ch, None
        if ch is not None:
            ch.kill()
            ch.close(timeout=2)

    def call(self, field: str, msg: Any, timeout: float) -> Any:
        """One request on the (re)opened channel; a broken channel is dropped so the next call reconnects."""
        with self._lock:
            ch = self._connect()
            try:
                reply = ch.call(field, msg, timeout=timeout)
            except AgentError as exc:  # the agent answered: the channel is still good
                raise CtError(f"{self.name}: {exc.message}", list(exc.details)) from exc
            except ChannelError as exc:
                tail = ch.stderr_tail()
                self._drop()
                raise CtError(
                    f"lost the agent on {self.name}: {exc.message}",
                    [*exc.details, *tail, "The console reconnects at the next refresh (r)."],
                ) from exc
            self.requests += 1
            return reply

    def inventory(self) -> list[Container]:
        """The host's containers, fully inventoried (externals included)."""
        reply = self.call("inventory", agent_pb2.InventoryRequest(), INVENTORY_TIMEOUT)
        try:
            items = json.loads(reply.json)
            return [from_dict(Container, d) for d in items]
        except (ValueError, TypeError, KeyError) as exc:
            raise CtError(f"the agent on {self.name} sent an inventory the console cannot read: {exc}") from exc

    def check(self, ref: str) -> dict[str, Any]:
        """The feasibility report of ``ref`` computed on that host (its ``to_dict`` form)."""
        reply = self.call("check", agent_pb2.CheckRequest(ref=ref), CHECK_TIMEOUT)
        try:
            data = json.loads(reply.json) if reply.json else {}
        except ValueError as exc:
            raise CtError(f"the agent on {self.name} sent a report the console cannot read: {exc}") from exc
        if not isinstance(data, dict):
            raise CtError(f"the agent on {self.name} sent a report the console cannot read")
        data.setdefault("verdict", reply.verdict)
        return data

    def close(self) -> None:
        """Say bye and reap the agent (and the ssh control master).

        Why not simply wait for the lock: a check may hold it for a minute;
        quitting must not wait for it, so a busy channel is aborted and killed
        (the waiting request then fails in its worker, which nobody reads any more).
        """
        if self._lock.acquire(timeout=0.5):
            try:
                ch, self._ch = self._ch, None
            finally:
                self._lock.release()
            if ch is not None:
                ch.close(timeout=2)
            return
        ch, self._ch = self._ch, None
        if ch is not None:
            ch.should_abort = lambda: True
            ch.kill()

