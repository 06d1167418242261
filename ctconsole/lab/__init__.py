"""Real demo and test containers: busybox rootfs run by plain namespaces, runc, LXC and libvirt-lxc,
plus network-namespace "hosts" to migrate them to.

Public API (what tests and other modules use)::

    from ctconsole import lab
    rep = lab.up()                      # UpReport(state, started, kept, failed)
    c = lab.status().containers["ctlab-ns"]   # LabContainer: init_pid, rootfs, counter_file, ...
    lab.read_counter(c.counter_file)    # [1, 2, 3, ...]
    lab.restart("ctlab-ns")             # fresh container (counter from 1)
    h = lab.host_add("dst1")            # LabHost: netns ctlab-dst1, address, src_netns, bridge
    h = lab.host_add("iso1", isolated=True, rate="1gbit")  # h.dest == "ssh://root@198.18.N.2"
    lab.host_run("iso1", ["ls", "/var/lib"])    # CompletedProcess, run inside the host
    lab.host_path("iso1", "/var/lib/x")        # "/proc/SSHD/root/var/lib/x": read it from here
    lab.host_real_pid("iso1", 42)              # this machine's pid of the host's pid 42 (own pid ns)
    lab.host_shape("iso1", "100mbit", "")
    lab.host_del("dst1"); lab.down()

Importing this package is cheap (no subprocess, no pyroute2): the CLI imports it lazily.
"""

from __future__ import annotations

from ctconsole.lab.common import last_counter, read_counter
from ctconsole.lab.core import ALL_NAMES, UpReport, adopt, down, refresh, resolve, restart, status, stop, up
from ctconsole.lab.hosts import add as host_add
from ctconsole.lab.hosts import argv_in as host_argv
from ctconsole.lab.hosts import delete as host_del
from ctconsole.lab.hosts import get as host_get
from ctconsole.lab.hosts import list_hosts as host_list
from ctconsole.lab.hosts import path_in as host_path
from ctconsole.lab.hosts import real_pid as host_real_pid
from ctconsole.lab.hosts import run_in as host_run
from ctconsole.lab.hosts import shape as host_shape
from ctconsole.lab.proc import LabError, ProcRef
from ctconsole.lab.state import LabContainer, LabHost, LabState, lab_dir

__all__ = [
    "ALL_NAMES",
    "LabContainer",
    "LabError",
    "LabHost",
    "LabState",
    "ProcRef",
    "UpReport",
    "adopt",
    "down",
    "host_add",
    "host_argv",
    "host_del",
    "host_get",
    "host_list",
    "host_path",
    "host_real_pid",
    "host_run",
    "host_shape",
    "lab_dir",
    "last_counter",
    "read_counter",
    "refresh",
    "resolve",
    "restart",
    "status",
    "stop",
    "up",
]
