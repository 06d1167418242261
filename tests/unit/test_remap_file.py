"""The ``file`` rule kind: an fd on a file the container cannot see -> a file opened on the destination.

Parse, validate, compile (criu-digest §3.9: ``file[MNTID:INO]`` in hex on dump,
the same key as inherit_fd on restore), ``open_inherit_fds``, suggest, and the
feasibility check counting the ``external-file`` finding as satisfied only when
the rules hand in the fd on restore.
"""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ctconsole.errors import CtError
from ctconsole.feasibility import check
from ctconsole.model import Container, Device, External, FdRef, Mount, OpenFile
from ctconsole.remap.compile import OPEN_FILE, InheritSpec, compile_rules, open_inherit_fds
from ctconsole.remap.model import Rule, RuleSet
from ctconsole.remap.parse import parse_text
from ctconsole.remap.suggest import item_slot, rule_kind_for, suggest, suggest_rules
from ctconsole.remap.validate import validate_text

LOG = "/var/log/app/out.log"
# mnt_id 44 = 0x2c, inode 0x1f2 (what the inventory records for an fd on a host mount)
KEY = "file[2c:1f2]"


def ct(**kw: Any) -> Container:
    """A container in its own mount namespace whose pid cannot exist here (no live /proc scan)."""
    base: dict[str, Any] = dict(
        id="ct1", name="web-1", runtime="lxc", init_pid=2**22 + 7, own_namespaces=("mnt",),
        mounts=(Mount(20, 1, "/", "/srv/rootfs", "ext4", "/dev/sda1", 8, 1),),
        files=(OpenFile(path=LOG, mnt_id=44, inode=0x1F2, holders=(FdRef(2**22 + 7, 1),),
                        external=External("open from a mount not in the container",
                                          f"CRIU external {KEY} on dump + inherit_fd {KEY} on restore")),),
    )
    base.update(kw)
    return Container(**base)


def wrap(rule: str, match: str = 'name = "*"') -> str:
    return f"version = 1\n[[container]]\nmatch = {{ {match} }}\n[[container.rule]]\n{textwrap.dedent(rule)}"


def v(text: str, host_checks: bool = True) -> list[str]:
    return [f"{p.line}: {p.message}" for p in validate_text(text, "f.toml", host_checks=host_checks)]


def rules(text: str) -> RuleSet:
    rs, problems = parse_text(text, "r.toml")
    assert problems == []
    return rs


# ---------------------------------------------------------------- parse / model


def test_parse_file_rule_keeps_fields_and_lines() -> None:
    rs, problems = parse_text(wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "/srv/log/out.log"\n'
                                   'mode = "append"\n'))
    assert problems == []
    (rule,) = rs.containers[0].rules
    assert rule.kind == "file" and rule.fields["destination"] == "/srv/log/out.log"
    assert rule.line == 4 and rule.line_of("mode") == 8
    assert rule.slot() == f"file:{LOG}" and rule.describe() == f"file {LOG}"


def test_slot_and_label_fall_back_to_fd_path() -> None:
    r = Rule(kind="file", fields={"fd_path": "/null", "destination": "/dev/null"})
    assert r.slot() == "file:/null" and r.describe() == "file /null"


# ---------------------------------------------------------------- validate


def test_valid_file_rule_with_host_checks(tmp_path: Path) -> None:
    dest = tmp_path / "new.log"  # need not exist: ctconsole creates it (its directory must exist)
    assert v(wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "{dest}"\n')) == []
    assert v(wrap(f'kind = "file"\nfd_path = "{LOG}"\ndestination = "{dest}"\nmode = "readwrite"\n')) == []


def test_file_rule_problems() -> None:
    out = v(wrap('kind = "file"\nsource = "out.log"\nfd_path = 3\ndestination = "rel/x"\nmode = "rw"\n'))
    assert "6: source 'out.log' is not an absolute path" in out
    assert "7: fd_path must be a string, not int" in out
    assert "8: destination 'rel/x' is not an absolute path" in out
    assert "9: mode 'rw': expected one of append, read, write, readwrite" in out
    assert v(wrap('kind = "file"\ndestination = "/tmp/x"\n'))[0].startswith(
        "4: a file rule needs source (the file's path on the source host) or fd_path")
    assert v(wrap(f'kind = "file"\nsource = "{LOG}"\n')) == ["4: missing field 'destination'"]
    assert "6: unknown field 'path' for a file rule" in v(wrap(
        f'kind = "file"\npath = "{LOG}"\nsource = "{LOG}"\ndestination = "/tmp/x"\n'))[0]


def test_file_rule_host_checks(tmp_path: Path) -> None:
    missing = tmp_path / "nodir" / "x.log"
    text = wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "{missing}"\n')
    assert v(text) == [f"7: the directory of destination {missing} does not exist on this host"]
    assert v(text, host_checks=False) == []
    assert v(wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "{tmp_path}"\n')) == [
        f"7: destination {tmp_path} is a directory; give the file to open"]
    absent = tmp_path / "absent"
    assert v(wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "{absent}"\nmode = "read"\n')) == [
        f"7: destination {absent} does not exist on this host (mode read does not create it)"]


def test_file_rules_overlap_in_one_block_only() -> None:
    two = wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "/tmp/a"\n'
               f'[[container.rule]]\nkind = "file"\nsource = "{LOG}"\ndestination = "/tmp/b"\n')
    assert any("overlaps rule #1 (line 4)" in p for p in v(two, host_checks=False))
    # source of one = fd_path of the other: the same slot (file:PATH)
    same = wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "/tmp/a"\n'
                f'[[container.rule]]\nkind = "file"\nfd_path = "{LOG}"\ndestination = "/tmp/b"\n')
    assert v(same, host_checks=False) == [f"8: overlaps rule #1 (line 4): both decide {LOG} in "
                                          "container[0] (name='*')"]
    # different slots (source /a vs source LOG) that still reach the same fd
    cross = wrap(f'kind = "file"\nsource = "/a"\nfd_path = "{LOG}"\ndestination = "/tmp/a"\n'
                 f'[[container.rule]]\nkind = "file"\nsource = "{LOG}"\ndestination = "/tmp/b"\n')
    assert v(cross, host_checks=False) == [f"9: overlaps rule #1 (line 4): both decide the fd on {LOG} in "
                                           "container[0] (name='*')"]
    # a later block for the same file overrides, it does not overlap
    later = wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "/tmp/a"\n') + (
        f'[[container]]\nmatch = {{ name = "web-*" }}\n[[container.rule]]\nkind = "file"\nsource = "{LOG}"\n'
        'destination = "/tmp/b"\n')
    assert v(later, host_checks=False) == []


# ---------------------------------------------------------------- compile


def test_compile_file_rule_from_inventory() -> None:
    rs = rules(wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "/srv/new.log"\n'))
    out = compile_rules(rs, ct())
    assert out.dump == {"external": [KEY]} and out.restore == {}
    (spec,) = out.inherit
    assert (spec.key, spec.how, spec.path, spec.via, spec.mode, spec.perm) == (
        KEY, OPEN_FILE, "/srv/new.log", "inherit_fd", "append", -1)
    assert out.inherit_fd_keys() == [KEY]
    assert any("mode append" in n and "unknown" in n for n in out.notes)
    assert not any("no file rule" in n for n in out.notes)  # the external item counts as handled
    assert out.to_json()["inherit_fd"][0]["mode"] == "append"


def test_compile_matches_fd_path_and_explicit_mode_notes_size_check() -> None:
    rs = rules(wrap(f'kind = "file"\nfd_path = "{LOG}"\ndestination = "/srv/new.log"\nmode = "readwrite"\n'))
    out = compile_rules(rs, ct())
    assert out.inherit[0].mode == "readwrite"
    assert any("has bad size" in n for n in out.notes)


def test_compile_unused_and_uncovered() -> None:
    rs = rules(wrap('kind = "file"\nsource = "/other"\ndestination = "/srv/x"\n'))
    out = compile_rules(rs, ct())
    assert out.dump == {} and out.inherit == []
    assert any("no fd of web-1 is open on '/other'; rule unused" in n for n in out.notes)
    assert any(n.startswith(f"no file rule for file {LOG} (mount 44)") for n in out.notes)


def test_compile_two_rules_for_one_fd_give_one_inherit() -> None:
    text = wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "/srv/a"\n') + (
        f'[[container]]\nmatch = {{ name = "web-*" }}\n[[container.rule]]\nkind = "file"\nsource = "/elsewhere"\n'
        f'fd_path = "{LOG}"\ndestination = "/srv/b"\n')
    out = compile_rules(rules(text), ct())
    assert [i.key for i in out.inherit] == [KEY] and out.dump["external"] == [KEY]
    assert any("already given by an earlier file rule" in n for n in out.notes)


def test_compile_reads_live_fds_for_mode_and_bits(tmp_path: Path) -> None:
    """A container on this host: flags, bits and device fds come from /proc (here: this process)."""
    f = tmp_path / "host.log"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    ro = os.open(f, os.O_RDONLY)
    try:
        me = Container(id="me", name="me", runtime="tree", init_pid=os.getpid(), own_namespaces=("mnt",))
        out = compile_rules(rules(wrap(f'kind = "file"\nsource = "{f}"\ndestination = "/srv/x"\n')), me)
        (spec,) = out.inherit
        mnt_id = next(int(ln.split()[1]) for ln in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
                      if ln.startswith("mnt_id:"))
        assert spec.key == f"file[{mnt_id:x}:{os.stat(f).st_ino:x}]"
        assert spec.perm == 0o600
        assert spec.mode == "readwrite"  # one fd appends, one reads: the destination must allow both
    finally:
        os.close(fd)
        os.close(ro)


def test_compile_size_note_follows_criu_rules(tmp_path: Path) -> None:
    """CRIU skips the size check for write-only + O_APPEND regular files and for non-regular
    files (/dev/null): no 'has bad size' note for them, one for a read fd."""
    me = Container(id="me", name="me", runtime="tree", init_pid=os.getpid(), own_namespaces=("mnt",))
    f = tmp_path / "a.log"
    fds = [os.open(f, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), os.open("/dev/null", os.O_RDWR)]
    try:
        text = wrap(f'kind = "file"\nsource = "{f}"\ndestination = "/srv/a"\nmode = "readwrite"\n'
                    '[[container.rule]]\nkind = "file"\nsource = "/dev/null"\ndestination = "/dev/null"\n')
        out = compile_rules(rules(text), me)
        assert {i.path for i in out.inherit} == {"/srv/a", "/dev/null"}
        assert not any("has bad size" in n for n in out.notes), out.notes
        fds.append(os.open(f, os.O_RDONLY))
        out = compile_rules(rules(text), me)
        assert [n for n in out.notes if "has bad size" in n and "/srv/a" in n]
    finally:
        for fd in fds:
            os.close(fd)


# ---------------------------------------------------------------- open_inherit_fds


def test_open_inherit_fds_creates_with_bits_and_appends(tmp_path: Path) -> None:
    new = tmp_path / "new.log"
    fds = open_inherit_fds([InheritSpec(key=KEY, how=OPEN_FILE, path=str(new), mode="append", perm=0o640)])
    try:
        fd = fds[KEY]
        assert os.get_inheritable(fd) is False  # the CRIU client passes it on explicitly
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o640
        os.write(fd, b"x\n")
    finally:
        for fd in fds.values():
            os.close(fd)
    assert new.read_text() == "x\n"
    # an existing file keeps its bits and content (no O_TRUNC: CRIU seeks to the saved offset)
    new.chmod(0o600)
    fds = open_inherit_fds([InheritSpec(key=KEY, how=OPEN_FILE, path=str(new), mode="write", perm=0o644)])
    try:
        assert stat.S_IMODE(os.fstat(fds[KEY]).st_mode) == 0o600
    finally:
        os.close(fds[KEY])
    assert new.read_text() == "x\n"


def test_open_inherit_fds_read_needs_the_file_and_closes_on_failure(tmp_path: Path) -> None:
    ok = tmp_path / "ok"
    ok.write_text("")
    specs = [InheritSpec(key="file[1:1]", how=OPEN_FILE, path=str(ok), mode="readwrite"),
             InheritSpec(key="file[1:2]", how=OPEN_FILE, path=str(tmp_path / "absent"), mode="read", line=9)]
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(CtError, match=r"cannot open .*absent \(read\) for file\[1:2\] \(rules line 9\)"):
        open_inherit_fds(specs)
    assert set(os.listdir("/proc/self/fd")) == before


# ---------------------------------------------------------------- suggest


def test_rule_kind_and_slot_for_external_open_file() -> None:
    f = ct().files[0]
    assert rule_kind_for(f) == "file" and item_slot(f, "file") == f"file:{LOG}"


def test_suggest_file_rule_with_why_comment() -> None:
    ((rule, why, comments),) = suggest_rules(ct())
    assert rule.kind == "file" and rule.fields == {"source": LOG, "destination": LOG}
    assert "Can't lookup mount" in " ".join(why) and KEY in " ".join(why)
    assert "GUESS" in comments["destination"]
    text = suggest(ct())
    rs, problems = parse_text(text)
    assert problems == [] and rs.containers[0].rules[0].kind == "file"
    assert validate_text(text, host_checks=False) == []


def test_suggest_from_external_file_findings() -> None:
    """A live-only fd (an inherited /dev/null the inventory lists as a device) comes from the finding."""
    c = ct(files=(), devices=(Device(path="/dev/null", kind="char", major=1, minor=3, supported=True),))
    from ctconsole.feasibility.findings import Finding

    finding = Finding("external-file", "needs-rule", "file /dev/null (pid 9 fd 0 (+2))", "open from mount 27",
                      "add a file rule", needs=("file[1b:5]",), needs_on="restore", rule_kind="file")
    ((rule, why, _),) = suggest_rules(c, findings=[finding])
    assert rule.fields == {"source": "/dev/null", "destination": "/dev/null"}
    assert "file[1b:5]" in " ".join(why)
    assert suggest_rules(c, findings=[finding.__class__(**{**finding.__dict__, "satisfied": True})]) == []


# ---------------------------------------------------------------- feasibility


def test_external_file_finding_needs_the_fd_on_restore() -> None:
    c = ct()
    plain = check(c, hosts=False)
    (f,) = [x for x in plain.findings if x.rule == "external-file"]
    assert f.needs == (KEY,) and f.needs_on == "restore" and f.rule_kind == "file"
    assert "'file' rule" in f.remedy
    assert plain.verdict == "needs-rules" and plain.options["dump"]["external"] == [KEY]
    # the dump half alone (the key is spelled the same there) is no remedy
    assert check(c, hosts=False, rules={"dump": {"external": [KEY]}}).verdict == "needs-rules"
    # an inherited fd given by notify (not inherit_fd) is no remedy either
    notify = {"dump": {}, "restore": {}, "inherit_fd": [{"key": KEY, "via": "notify"}]}
    assert check(c, hosts=False, rules=notify).verdict == "needs-rules"
    # compiled options, their JSON form and a hand-written restore inherit_fd all are
    rs = rules(wrap(f'kind = "file"\nsource = "{LOG}"\ndestination = "/srv/new.log"\n'))
    compiled = compile_rules(rs, c)
    for given in (compiled, compiled.to_json(), rs,
                  {"dump": {}, "restore": {"inherit_fd": [{"key": KEY}]}}):
        r = check(c, hosts=False, rules=given)
        assert r.verdict == "no-known-blockers", r.to_dict()  # static check: never "feasible" (#11)
        (sat,) = [x for x in r.findings if x.rule == "external-file"]
        assert sat.satisfied and sat.to_dict()["needs_on"] == "restore"
