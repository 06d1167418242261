"""Waiting on a running console in tests that drive the real core (test_real, test_remote)."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot
from textual.widgets import Static


async def until(pilot: Pilot, cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``cond()``; on timeout fail with the screen, the notifications and any error panel."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        await pilot.pause(0.05)
    notes = [str(n.message) for n in pilot.app._notifications]
    panel = ""
    if type(pilot.app.screen).__name__ == "ErrorScreen":
        panel = str(pilot.app.screen.query_one("#error-body", Static).render())
    raise AssertionError(
        f"{what} did not happen in {timeout}s; screen={pilot.app.screen!r}; "
        f"notifications={notes}; error panel:\n{panel}"
    )
