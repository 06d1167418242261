"""The inventory against the real lab containers (libvirt-lxc, LXC, runc, namespaces).

The session ``lab`` fixture brings the lab up (and down afterwards unless it was already up).
"""

from __future__ import annotations

from typing import Any

import pytest

from ctconsole import inventory
from tests import lab_fixtures

lab = lab_fixtures.lab

pytestmark = [pytest.mark.root, pytest.mark.lab]


@pytest.fixture(scope="module")
def lab_containers(lab: Any) -> list[Any]:
    from ctconsole.lab import core

    running = [c for c in core.status().containers.values() if c.running]
    assert {c.runtime for c in running} >= {"namespaces", "runc", "lxc", "libvirt-lxc"}, running
    return running


def test_each_lab_container_is_found_with_its_runtime(lab_containers: list[Any]) -> None:
    for lc in lab_containers:
        c = inventory.resolve(f"pid:{lc.init_pid}")
        assert c.runtime == lc.runtime, (lc.name, c.runtime)
        assert c.init_pid == lc.init_pid
        if lc.runtime_id and lc.runtime in ("lxc", "runc"):
            assert c.id == lc.runtime_id
        if lc.runtime == "libvirt-lxc":
            assert c.name == lc.runtime_id
        if lc.runtime == "namespaces":  # no runtime names it: its UTS hostname does
            assert c.name == lc.name


def test_lab_ties_to_the_outside(lab_containers: list[Any]) -> None:
    for lc in lab_containers:
        c = inventory.resolve(f"pid:{lc.init_pid}")
        if lc.host_veth:
            veths = [i for i in c.interfaces if i.peer_ifname == lc.host_veth]
            assert veths and veths[0].external is not None, lc.name
            if lc.bridge:
                assert veths[0].bridge == lc.bridge
        if lc.unix_socket:
            socks = [s for s in c.sockets if s.peer_path == lc.unix_socket and s.external is not None]
            assert socks, lc.name
        if lc.share_target:
            mounts = [m for m in c.mounts if m.mountpoint == lc.share_target]
            assert mounts and mounts[0].external is not None, lc.name
        if lc.runtime == "libvirt-lxc":
            assert any(t.external is not None and "libvirt_lxc" in t.master_holder for t in c.ttys)
            fuse = [m for m in c.mounts if m.fstype.startswith("fuse")]
            assert all(m.external is not None for m in fuse)
