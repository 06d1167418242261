"""The one way to talk to a destination: channel, handshake, host probe, and the destination's policy.

Layer: below feasibility and migrate, above criu/inventory/remap (../shared/DESIGN.md).
"""
