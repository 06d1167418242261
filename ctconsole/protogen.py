"""Generate ``ctconsole/proto/*_pb2.py`` from ``proto/*.proto`` (run: ``make proto``).

Why committed: the generated modules then import without protoc on the
operator's machine; ``tests/unit/test_proto.py`` regenerates them into a
temporary directory and fails if the committed copies differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "proto"
PROTOS = ("rpc.proto", "stats.proto", "agent.proto")


def generate(out_dir: Path = OUT_DIR) -> list[Path]:
    from grpc_tools import protoc  # dev dependency only

    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for name in PROTOS:
        if not (PROTO_DIR / name).exists():
            continue
        rc = protoc.main(
            ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", str(PROTO_DIR / name)]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed on {name}")
        made.append(out_dir / name.replace(".proto", "_pb2.py"))
        made.append(out_dir / name.replace(".proto", "_pb2.pyi"))
    return made


if __name__ == "__main__":
    for p in generate():
        print(f"generated {p.relative_to(ROOT)}")
    sys.exit(0)
