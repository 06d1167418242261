"""The committed *_pb2.py match proto/*.proto, and proto/ matches CRIU's wire format."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from ctconsole import protogen

ROOT = Path(__file__).resolve().parents[2]
CRIU_PROTO_DIRS = [
    Path("/usr/local/share/ctconsole/criu-images"),
    *sorted(Path("/var/cache/ctconsole/criu-src").glob("criu-*/images")),
]


def test_generated_modules_match_proto_files(tmp_path: Path) -> None:
    made = protogen.generate(tmp_path)
    assert made, "nothing generated"
    for fresh in made:
        committed = ROOT / "ctconsole" / "proto" / fresh.name
        assert committed.exists(), f"{committed} is not committed (run `make proto`)"
        assert filecmp.cmp(fresh, committed, shallow=False), f"{committed.name} is stale: run `make proto`"


def _fields(proto_dir: Path, name: str, tmp: Path) -> dict[str, dict[str, tuple[int, int, int]]]:
    """message -> field -> (number, type, label) by compiling with protoc into a descriptor set."""
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc

    out = tmp / f"{name}.{abs(hash(str(proto_dir)))}.pb"
    assert protoc.main(["protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}", str(proto_dir / name)]) == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    res: dict[str, dict[str, tuple[int, int, int]]] = {}
    for f in fds.file:
        for m in f.message_type:
            res[m.name] = {fl.name: (fl.number, fl.type, fl.label) for fl in m.field}
    return res


@pytest.mark.parametrize("name", ["rpc.proto", "stats.proto"])
def test_messages_match_criu_source(name: str, tmp_path: Path) -> None:
    ref = next((d for d in CRIU_PROTO_DIRS if (d / name).exists()), None)
    if ref is None:
        pytest.skip("CRIU's source protos are not on this machine (scripts/install-criu puts them there)")
    ours = _fields(ROOT / "proto", name, tmp_path)
    theirs = _fields(ref, name, tmp_path)
    for msg, fields in ours.items():
        assert msg in theirs, f"{msg} is not a CRIU message"
        for fname, spec in fields.items():
            assert theirs[msg].get(fname) == spec, f"{msg}.{fname}: ours {spec} != CRIU {theirs[msg].get(fname)}"
