"""Nothing outside ``ctconsole.ui`` may import textual or rich.

Why: the CLI (``ctconsole list --json``), the agent on a destination host and
the engine must start fast and must not need a terminal UI stack; the
DESIGN.md boundary is enforced here by importing every non-UI module in a
clean interpreter and checking ``sys.modules``. ``ctconsole.ui.backend`` and
``ctconsole.ui.fake`` are deliberately UI-free too (headless benchmarks and
core tests use them).
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import importlib, json, pkgutil, sys
import ctconsole
failed = {}
names = ["ctconsole.cli", "ctconsole.model", "ctconsole.config", "ctconsole.errors",
         "ctconsole.ui.backend", "ctconsole.ui.fake"]
for m in pkgutil.walk_packages(ctconsole.__path__, "ctconsole."):
    if m.name == "ctconsole.ui" or m.name.startswith("ctconsole.ui.") or m.name == "ctconsole.__main__":
        continue
    names.append(m.name)
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:  # reported below: every module must import on its own
        failed[name] = f"{type(exc).__name__}: {exc}"
    if "textual" in sys.modules or "rich" in sys.modules:
        print(json.dumps({"culprit": name}))
        sys.exit(0)
from ctconsole.cli import build_parser
build_parser()
print(json.dumps({"culprit": None, "failed": failed, "imported": len(names)}))
"""


def test_core_does_not_import_textual_or_rich() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["culprit"] is None, f"{result['culprit']} pulls in textual or rich"
    assert result["imported"] >= 6
    assert result["failed"] == {}, result["failed"]


def test_ui_package_init_is_light() -> None:
    code = "import ctconsole.ui, sys; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
