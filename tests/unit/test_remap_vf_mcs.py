"""VF pool selection and MCS allocation helpers."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from ctconsole.errors import CtError
from ctconsole.remap import mcs, vf


def make_pf(root: Path, pf: str, vfs: dict[int, tuple[str, str, str]]) -> None:
    """index -> (netdev, flags, master)."""
    dev = root / "class/net" / pf / "device"
    dev.mkdir(parents=True)
    for idx, (name, flags, master) in vfs.items():
        vdir = root / "devices" / f"{pf}-vf{idx}"
        (vdir / "net").mkdir(parents=True)
        os.symlink(vdir, dev / f"virtfn{idx}")
        if name:
            (vdir / "net" / name).mkdir()
            nd = root / "class/net" / name
            nd.mkdir(parents=True)
            (nd / "flags").write_text(flags)
            if master:
                os.symlink(root / "class/net" / master, nd / "master")
    (dev / "sriov_numvfs").write_text(str(len(vfs)))


def test_pick_free_vf(tmp_path: Path) -> None:
    make_pf(tmp_path, "pf0", {0: ("v0", "0x1003", ""), 1: ("v1", "0x1002", "br0"), 2: ("", "", ""),
                              3: ("v3", "0x1002", ""), 10: ("v10", "0x1002", "")})
    infos = vf.list_vfs("pf0", tmp_path)
    assert [(i.index, i.netdev, i.free) for i in infos] == [(0, "v0", False), (1, "v1", False), (2, "", False),
                                                           (3, "v3", True), (10, "v10", True)]
    assert vf.pick_free_vf(vf.VfPool("pf0"), tmp_path).netdev == "v3"
    assert vf.pick_free_vf(vf.VfPool("pf0", (10,)), tmp_path).netdev == "v10"
    assert vf.pick_free_vf(vf.VfPool("pf0"), tmp_path, exclude=("v3",)).netdev == "v10"
    with pytest.raises(CtError, match="no free VF on pf0"):
        vf.pick_free_vf(vf.VfPool("pf0", (0, 1, 2)), tmp_path)
    assert vf.list_vfs("nope", tmp_path) == []


def test_parse_vf_list() -> None:
    assert vf.parse_vf_list([3, "0-2", "7"]) == (0, 1, 2, 3, 7)
    assert vf.parse_vf_list(None) is None
    for bad in ("1", [True], [-1], ["3-1"], ["a"]):
        with pytest.raises(ValueError):
            vf.parse_vf_list(bad)
    with pytest.raises(ValueError):
        vf.pool_from_rule({"pf": "x", "vf": [1]})


def test_mcs_helpers(tmp_path: Path) -> None:
    assert mcs.parse_level("s0:c5,c2") == (2, 5)
    assert mcs.parse_level("s0:c1.c1023") is None and mcs.parse_level("s0:c1,c1") is None
    assert mcs.level_of("u:r:t:s0:c1,c2\x00") == "s0:c1,c2" and mcs.level_of("unconfined") == ""
    assert mcs.with_level("u:r:t:s0", "s0:c1,c2") == "u:r:t:s0:c1,c2"
    assert mcs.with_level("u:r:t", "s0:c1,c2") == "u:r:t:s0:c1,c2"
    for pid, ctx in (("1", "u:r:t:s0:c1,c2"), ("2", "u:r:t:s0-s0:c0.c1023"), ("self", "u:r:t:s0:c3,c4")):
        (tmp_path / pid / "attr").mkdir(parents=True)
        (tmp_path / pid / "attr" / "current").write_text(ctx)
    assert mcs.used_pairs(tmp_path) == {(1, 2)}
    level = mcs.allocate({(1, 2)}, random.Random(3))
    assert mcs.parse_level(level) not in (None, (1, 2))
