"""Command-line entry point: no subcommand opens the console; subcommands script the same engine.

Why lazy: ``ctconsole list --json`` must start fast (importing pyroute2 alone
costs ~150 ms), so each subcommand lives in ``ctconsole/commands/NAME.py``,
whose ``register()`` only declares arguments and whose handler imports what
it needs when it runs. The command modules themselves are imported plainly
(they are cheap), so a reader and mypy can follow every ``register``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ctconsole import __version__
from ctconsole.commands import check, destinations, doctor, inventory, lab, migrate, rules
from ctconsole.errors import CtError

# subcommand modules, in the order --help lists them
COMMAND_MODULES = (
    inventory,  # list, show
    check,  # check
    rules,  # rules validate|compile|suggest
    migrate,  # migrate, agent, history, keepers, console
    destinations,  # destinations (also for shell completion of --to)
    lab,  # lab up|down|status|host
    doctor,  # doctor
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctconsole",
        description="Checkpoint and live-migrate Linux containers with CRIU. "
        "Without a subcommand, opens the console (a terminal UI).",
    )
    parser.add_argument("--version", action="version", version=f"ctconsole {__version__}")
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="DEST",
        help="also show this host in the console (ssh://[user@]host[:port] or netns:NAME); repeatable",
    )
    parser.add_argument("--theme", help="console theme name (remembered in the user config)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        mod.register(sub)
    return parser


def _run_console(args: argparse.Namespace) -> int:
    from ctconsole.ui.app import run_app

    return run_app(hosts=list(args.host), theme=args.theme)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            return _run_console(args)
        return int(args.func(args) or 0)
    except CtError as exc:
        print(f"ctconsole: error: {exc.message}", file=sys.stderr)
        for line in exc.details:
            print(f"  {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ctconsole: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # last line of defence: no traceback in front of the operator
        if os.environ.get("CTCONSOLE_DEBUG"):
            raise
        print(
            f"ctconsole: internal error: {type(exc).__name__}: {exc}\n"
            "  (set CTCONSOLE_DEBUG=1 to see the traceback, and please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
