"""The one handshake (ctconsole.agent.connect): a real agent answers; what cannot be reached says why and what to try.

The agents here are real processes: ``ctconsole agent --stdio`` on this host,
``ip netns exec`` of a namespace that does not exist, and a tiny peer that
speaks the framing but another protocol version (what an agent of another
ctconsole release would answer). Nothing is left running afterwards.
"""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from ctconsole.agent.channel import PROTOCOL_VERSION, AgentChannel, parse_destination
from ctconsole.agent.connect import Unreachable, connect, unreachable_hints
from ctconsole.errors import CtError
from ctconsole.feasibility import _unreachable

ROOT = Path(__file__).resolve().parents[2]

OTHER_PROTOCOL = textwrap.dedent(f"""
    import os, struct, sys
    sys.path.insert(0, {str(ROOT)!r})
    from ctconsole.proto import agent_pb2
    n = struct.unpack(">I", os.read(0, 4))[0]
    data = b""
    while len(data) < n:
        data += os.read(0, n - len(data))
    req = agent_pb2.Request.FromString(data)
    out = agent_pb2.Reply(id=req.id, hello=agent_pb2.HelloReply(protocol={PROTOCOL_VERSION + 1})).SerializeToString()
    os.write(1, struct.pack(">I", len(out)) + out)
    os.read(0, 1)  # until the console closes
""")


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("CTCONSOLE_RUN_DIR", str(tmp_path / "run"))
    return tmp_path


def _children() -> set[int]:
    out: set[int] = set()
    for t in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{t}/children") as f:
            out.update(int(x) for x in f.read().split())
    return out


def test_local_agent_says_hello(state: Path) -> None:
    ch, hello = connect("local", timeout=60)
    try:
        assert hello.protocol == PROTOCOL_VERSION and hello.agent_pid == ch.pid and hello.hostname
    finally:
        ch.close()
    assert ch.proc is not None and ch.proc.returncode is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="ip netns exec needs root")
def test_missing_netns_is_unreachable_with_the_hint(state: Path) -> None:
    name = f"ctt-none{uuid.uuid4().hex[:6]}"
    before = _children()
    with pytest.raises(Unreachable) as exc:
        connect(f"netns:{name}", timeout=20)
    e = exc.value
    assert isinstance(e, CtError) and e.message == f"cannot reach the agent on netns:{name}"
    assert e.reasons and any(name in r for r in [*e.reasons, *e.details])
    assert any("ip netns list" in d for d in e.details)
    assert e.hints == unreachable_hints(parse_destination(f"netns:{name}"))
    assert _children() <= before, "the failed agent was left running"
    # the feasibility check turns the same error into its finding: the cause first, the hint as the remedy
    f = _unreachable(f"netns:{name}", e)
    assert f.message.startswith("destination unreachable: ") and "cannot reach" not in f.message
    assert "ip netns list" in f.remedy


def test_another_protocol_is_refused(state: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    peer = tmp_path / "peer.py"
    peer.write_text(OTHER_PROTOCOL)
    monkeypatch.setattr(AgentChannel, "argv", lambda self: [sys.executable, str(peer)])
    before = _children()
    with pytest.raises(Unreachable) as exc:
        connect("local", timeout=20)
    assert f"protocol {PROTOCOL_VERSION + 1}" in exc.value.reasons[0]
    assert _children() <= before


def test_ssh_hints_name_the_knobs() -> None:
    hints = " ".join(unreachable_hints(parse_destination("ssh://root@host.example:2222")))
    assert "BatchMode" in hints and "CTCONSOLE_REMOTE_CMD" in hints and "CTCONSOLE_SSH_OPTS" in hints
    assert unreachable_hints(parse_destination("local")) == []
