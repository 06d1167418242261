"""The agent answers exactly the request kinds in its table (migrate/destination.py HANDLERS), nothing by name.

Why: the server used to call ``getattr(self, "on_" + kind)``, so any method
named ``on_...`` was reachable by whoever speaks the protocol. Now a kind is
served only when the explicit table maps it, and the table covers every
body of ``Request`` (a new message without a handler fails here first).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ctconsole.migrate import destination
from ctconsole.proto import agent_pb2
from tests.unit.test_agent import Conn


def test_table_covers_every_request_kind() -> None:
    kinds = {f.name for f in agent_pb2.Request.DESCRIPTOR.oneofs_by_name["body"].fields}
    assert set(destination.HANDLERS) == kinds
    replies = {f.name for f in agent_pb2.Reply.DESCRIPTOR.oneofs_by_name["body"].fields}
    assert kinds <= replies, "every reply goes into the Reply field of the same name"


def test_a_kind_missing_from_the_table_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(destination.HANDLERS, "inventory")
    c = Conn(tmp_path, monkeypatch)
    try:
        r = c.call("inventory", agent_pb2.InventoryRequest())
        assert r.WhichOneof("body") == "error" and r.error.code == "bad-request", r
        assert "'inventory' is not served" in r.error.message
        # the method still exists on the server: only the table decides what is reachable
        assert callable(destination.DestinationServer.on_inventory)
        r = c.call("bye", agent_pb2.ByeRequest())
        assert r.WhichOneof("body") == "bye"
    finally:
        c.close()
