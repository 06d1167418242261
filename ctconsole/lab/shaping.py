"""Shape a lab link with ``tc``: a ``tbf`` rate and a ``netem`` delay on each end's egress.

Why both ends: traffic to the destination leaves through the source end and the
replies through the destination end, so each direction gets the same rate and
one-way delay (a round trip takes twice the delay). With both set, netem is the
root qdisc and tbf its child, the usual way to combine them. No rate and no
delay means no qdisc of ours at all (the veth's default, ``noqueue``).
"""

from __future__ import annotations

import re

from ctconsole.errors import UsageError
from ctconsole.lab import netns

_RATE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$", re.I)
_DELAY_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(us|usec|ms|msec|s|sec)$", re.I)
_BITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
_BYTES = {"bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12}


def rate_bits(rate: str) -> float:
    """``100mbit`` -> 1e8 (tc's units: ``bit`` suffixes are bits, ``bps`` suffixes bytes per second)."""
    m = _RATE_RE.match(rate)
    if not m:
        raise UsageError(f"bad rate {rate!r}", ["use a tc rate such as 100mbit, 1gbit or 500kbit"])
    unit = m.group(2).lower()
    return float(m.group(1)) * (_BITS.get(unit) or _BYTES[unit])


def check_delay(delay: str) -> None:
    if not _DELAY_RE.match(delay):
        raise UsageError(f"bad delay {delay!r}", ["use a tc time such as 10ms, 500us or 1s"])


def _tc(*args: str, netns_name: str = "") -> None:
    from ctconsole.lab.proc import LabError, run

    argv = ["tc"] + (["-n", netns_name] if netns_name else []) + list(args)
    cp = run(argv, check=False)
    if cp.returncode == 0:
        return
    if "netem" in args and "qdisc kind is unknown" in cp.stderr:
        raise LabError(
            "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM is not set): a delay cannot be emulated here",
            ["--rate works without it (tbf)", "on a kernel with sch_netem, --delay adds a one-way delay"],
        )
    raise LabError(f"{' '.join(argv)} failed (exit {cp.returncode})", cp.stderr.strip().splitlines()[-4:])


def apply(dev: str, rate: str, delay: str, netns_name: str = "") -> None:
    """Replace ``dev``'s egress qdisc with the shaping asked for (or remove ours when neither is set).

    On failure the link is left unshaped (never half-shaped).
    """
    clear(dev, netns_name)
    try:
        _apply(dev, rate, delay, netns_name)
    except Exception:
        clear(dev, netns_name)
        raise


def _apply(dev: str, rate: str, delay: str, netns_name: str) -> None:
    tbf: list[str] = []
    if rate:
        bits = rate_bits(rate)
        burst = max(64 * 1024, int(bits / 8 / 100))  # 10 ms worth (and at least one GSO packet)
        tbf = ["tbf", "rate", rate, "burst", str(burst), "latency", "100ms"]
    if delay:
        check_delay(delay)
        _tc("qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", "delay", delay, "limit", "100000",
            netns_name=netns_name)
        if tbf:
            _tc("qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf, netns_name=netns_name)
    elif tbf:
        _tc("qdisc", "add", "dev", dev, "root", "handle", "1:", *tbf, netns_name=netns_name)


def clear(dev: str, netns_name: str = "") -> None:
    """Remove our root qdisc from ``dev`` (nothing happens when there is none)."""
    if netns.link_exists(dev, netns_name or None):
        from ctconsole.lab.proc import run

        run(["tc"] + (["-n", netns_name] if netns_name else []) + ["qdisc", "del", "dev", dev, "root"], check=False)


def show(dev: str, netns_name: str = "") -> str:
    from ctconsole.lab.proc import run

    return run(["tc"] + (["-n", netns_name] if netns_name else []) + ["qdisc", "show", "dev", dev], check=False).stdout
