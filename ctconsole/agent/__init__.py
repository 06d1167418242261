"""The one way to talk to a destination: channel, handshake, host probe, and the destination's policy.

``channel`` (frames, :class:`~ctconsole.agent.channel.Destination` parsing,
:class:`~ctconsole.agent.channel.AgentChannel`), ``connect`` (the handshake:
:func:`~ctconsole.agent.connect.connect`), ``hostprobe`` (the agent's read-only
answers to ``check --to``). The server that answers on the far side and
restores is :mod:`ctconsole.migrate.destination`.

Layer: below feasibility and migrate, above criu/inventory/remap (../shared/DESIGN.md).
"""
