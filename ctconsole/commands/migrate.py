"""``ctconsole migrate | agent | history | keepers | console``: live migration from the command line.

Why here and thin: the engine (ctconsole.migrate.engine) does the work and
reports plain events; this module only turns flags into a MigrationRequest
and events into lines (a progress bar + phase lines) or JSON objects. Heavy
imports happen inside the handlers so ``ctconsole --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "migrate",
        help="live-migrate a container to another host",
        description="Checkpoint a container with CRIU and restore it on DEST. The source is only "
        "released after the destination reports the container running (and --probe passes); any "
        "failure before that resumes the source. Exit 0 only when migrated.",
    )
    p.add_argument("ref", help="container: id, name, pid:N or tree:N (as `show` accepts)")
    p.add_argument("--to", required=True, metavar="DEST", help="local, netns:NAME or ssh://[user@]host[:port]")
    p.add_argument("--strategy", choices=["auto", "stop-copy", "pre-copy", "post-copy"], default="auto")
    p.add_argument("--rules", metavar="FILE", help="remap rules file (what changes on the destination)")
    p.add_argument("--probe", metavar="NAME", help="a probe the destination's policy defines ([probes] in "
                   "/etc/ctconsole/agent.toml there), or link:IFNAME (the interface exists in the container); "
                   "it must pass before the source is released. The destination runs its own argv, never ours")
    p.add_argument("--no-page-server", dest="page_server", action="store_false",
                   help="stop-copy: dump locally and send all images over the agent channel instead of "
                   "streaming pages to the destination's CRIU page server during the dump")
    p.add_argument("--copy-images", dest="shared_images", action="store_false",
                   help="send the images even when DEST shares this filesystem (local, a netns: lab host); "
                   "by default they are hard-linked there (no copy, no page server)")
    p.add_argument("--storage", choices=["auto", "shared", "copy"], default="auto",
                   help="the container's root and carry = true mount sources: auto copies (rsync over the same "
                   "SSH connection) what the destination does not already have; shared never copies; copy always")
    p.add_argument("--timeout", type=float, default=120.0, help="bound for each CRIU step (s)")
    p.add_argument("--precopy-max-rounds", "--max-rounds", dest="max_rounds", type=_positive_int, default=5,
                   metavar="N", help="pre-copy: at most N PRE_DUMP rounds before the final dump (default 5)")
    p.add_argument("--precopy-threshold-pages", "--min-pages", dest="min_pages", type=_nonneg_int, default=1024,
                   metavar="PAGES", help="pre-copy: do the final dump once a round writes fewer pages "
                   "(default 1024)")
    p.add_argument("--precopy-growth", "--max-growth", dest="max_growth", type=_positive_float, default=1.0,
                   metavar="RATIO", help="pre-copy: do the final dump when a round writes more than RATIO times "
                   "the previous one (not converging; default 1.0)")
    p.add_argument("--json", action="store_true", help="one JSON object per event; the last is 'done'")
    p.set_defaults(func=run_migrate)

    a = sub.add_parser("agent", help="destination-side agent (started by migrate over ssh/netns)",
                       description="Speak the ctconsole agent protocol on stdin/stdout.")
    a.add_argument("--stdio", action="store_true", required=True, help="use stdin/stdout (the only mode)")
    a.set_defaults(func=run_agent)

    h = sub.add_parser("history", help="past migrations from the journal",
                       description="List migrations (newest last) and resolve any left unfinished "
                       "by a crashed ctconsole.")
    h.add_argument("--json", action="store_true")
    h.add_argument("--no-recover", action="store_true", help="do not resolve unfinished migrations")
    h.set_defaults(func=run_history)

    k = sub.add_parser("keepers", help="restore parents of migrated containers on this host",
                       description="List the keepers: each restored a migrated container as its own child "
                       "and stays its parent (a parent-death signal would kill it otherwise), holding its "
                       "console and re-created stdio pipes. A keeper exits when its container does.")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=run_keepers)

    c = sub.add_parser("console", help="attach to the terminal of a restored container",
                       description="Attach to the PTY master ctconsole keeps for a migrated container "
                       "(detach with Ctrl-]).")
    c.add_argument("ref", help="migration id (see history) or the path of a console socket")
    c.set_defaults(func=run_console)


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def _nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return v


class _Printer:
    """Events -> human lines: phase changes as lines, transfer progress as one bar."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.bar = False
        self.tty = sys.stderr.isatty()
        self.rate = 0.0

    def __call__(self, e: object) -> None:
        from ctconsole.migrate import events as ev

        if self.as_json:
            print(json.dumps(ev.to_json(e), default=str), flush=True)
            return
        if isinstance(e, ev.Transfer):
            if e.kind == "linked":  # nothing moved: say so instead of a bar stuck at 0 B/s
                if self.bar:
                    sys.stderr.write("\n")
                    self.bar = False
                print(f"   images linked on the destination ({e.done / 2**20:.1f} MiB, no copy)", flush=True)
            elif self.tty and e.total:
                fill = int((e.fraction or 0) * 30)
                rate = f"{e.rate / 2**20:7.1f} MiB/s" if e.rate else ""
                sys.stderr.write(f"\r  {e.kind:<8} [{'#' * fill}{'.' * (30 - fill)}] {e.done / 2**20:8.1f} MiB {rate}")
                sys.stderr.flush()
                self.bar = True
            return
        if isinstance(e, ev.FinalDump):
            return  # the final dump is not a round; its frozen time follows
        if isinstance(e, ev.RoundProgress):
            # pre-copy rounds: how fast the dirty set shrinks is what an operator watches
            if self.bar:
                sys.stderr.write("\n")
                self.bar = False
            print(f"   round {e.round}: {e.pages_written} pages written ({e.pages_scanned} scanned, "
                  f"{e.pages_skipped} unchanged since the previous round)", flush=True)
            return
        if self.bar:
            sys.stderr.write("\n")
            self.bar = False
        if isinstance(e, ev.PhaseChanged):
            print(f"== {e.phase}" + (f": {e.detail}" if e.detail else ""), flush=True)
        elif isinstance(e, ev.LogLine):
            print(f"   {e.level}: {e.text}" if e.level != "info" else f"   {e.text}", flush=True)
        elif isinstance(e, ev.FrozenTime):
            print(f"   source frozen for {e.seconds * 1000:.1f} ms (CRIU)", flush=True)
        elif isinstance(e, ev.RestoreTime):
            print(f"   restore took {e.seconds * 1000:.1f} ms (CRIU)", flush=True)
        elif isinstance(e, ev.Downtime):
            print(f"   downtime {e.seconds * 1000:.1f} ms", flush=True)
        elif isinstance(e, ev.Done):
            print(f"{e.result.upper()}: {e.message}", flush=True)
            for line in e.errors[:20]:
                print(f"  {line}", flush=True)


def run_migrate(args: argparse.Namespace) -> int:
    import signal

    from ctconsole.agent.channel import parse_destination
    from ctconsole.migrate.engine import Migration, MigrationRequest
    from ctconsole.migrate.precopy import PrecopyPolicy
    from ctconsole.migrate.recovery import recover

    parse_destination(args.to)  # a bad DEST is a usage error, before anything is checked or frozen
    printer = _Printer(args.json)
    recover(say=lambda line: printer(_log(line)))
    req = MigrationRequest(
        ref=args.ref, dest=args.to, strategy=args.strategy, rules=args.rules, probe=args.probe,
        timeout=args.timeout, page_server=args.page_server,
        shared_images=args.shared_images, storage=args.storage,
        policy=PrecopyPolicy(max_rounds=args.max_rounds, min_pages=args.min_pages, max_growth=args.max_growth),
    )
    mig = Migration(req, printer)

    def on_signal(signum: int, frame: Any) -> None:
        # never raise inside the CRIU conversation: ask for a rollback at the next safe point
        mig.abort()

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        done = mig.run()
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return 0 if done.result == "migrated" else 1


def _log(text: str) -> object:
    from ctconsole.migrate.events import LogLine

    return LogLine("warning", text)


def run_agent(args: argparse.Namespace) -> int:
    from ctconsole.migrate.destination import run_stdio

    return run_stdio()


def run_keepers(args: argparse.Namespace) -> int:
    from ctconsole.migrate.keeper import list_keepers

    recs = list_keepers()
    if args.json:
        for r in recs:
            print(json.dumps(r))
        return 0
    if not recs:
        print("no keepers on this host")
        return 0
    print(f"{'KEEPER':>8} {'ROOT':>8} {'STATE':8} MIGRATION / CONSOLE / LOGS")
    for r in recs:
        extra = [x for x in (r.get("console", ""), *r.get("logs", [])) if x]
        print(f"{r['keeper']:>8} {r['root']:>8} {'running' if r['root_running'] else 'exiting':8} "
              f"{r.get('migration_id', '')}" + (f" {' '.join(extra)}" if extra else ""))
    return 0


def run_history(args: argparse.Namespace) -> int:
    from ctconsole.migrate.journal import journals, summarize
    from ctconsole.migrate.recovery import recover

    notes = [] if args.no_recover else recover()
    rows = [summarize(p) for p in journals()]
    if args.json:
        for line in notes:
            print(json.dumps({"recovered": line}))
        for s in rows:
            print(json.dumps(s.to_json(), default=str))
        return 0
    for line in notes:
        print(f"recovered {line}")
    if not rows:
        print("no migrations yet")
    for s in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started))
        down = f"{s.downtime * 1000:.0f} ms" if isinstance(s.downtime, int | float) else "-"
        print(f"{when}  {s.id}  {s.container:<20} -> {s.dest:<22} {s.strategy:<19} {s.result:<11} "
              f"downtime {down}  {s.message}")
    return 0


def run_console(args: argparse.Namespace) -> int:
    import select
    import termios
    import tty

    from ctconsole.config import run_dir
    from ctconsole.errors import UsageError
    from ctconsole.migrate.keeper import fetch_master

    path = args.ref if os.path.isabs(args.ref) else str(run_dir() / "consoles" / f"{args.ref}.sock")
    if not os.path.exists(path):
        raise UsageError(f"no console kept for '{args.ref}'", [f"looked for {path}"])
    master = fetch_master(path)
    stdin = sys.stdin.fileno()
    old = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    print("attached; detach with Ctrl-]", file=sys.stderr)
    try:
        if old is not None:
            tty.setraw(stdin)
        while True:
            r, _, _ = select.select([stdin, master], [], [])
            if master in r:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    break
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if stdin in r:
                data = os.read(stdin, 4096)
                if not data or b"\x1d" in data:
                    break
                os.write(master, data)
    finally:
        if old is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, old)
        os.close(master)
    print("\ndetached", file=sys.stderr)
    return 0
