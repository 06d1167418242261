"""Hosts & containers: the table the operator starts from.

Why it polls this way: the scan runs in a thread worker and the next one is
armed only when the previous one finished (success or failure), so scans
never overlap and input is never blocked; rows are updated by key inside
``batch_update`` so the cursor and scroll position survive each refresh.
"""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Header, Input, OptionList, Static
from textual.worker import get_current_worker

from ctconsole.model import Container
from ctconsole.ui import keymap
from ctconsole.ui.messages import ContainersLoaded, ScanFailed
from ctconsole.ui.screens.base import BaseScreen
from ctconsole.ui.widgets.render import plain, verdict_badge

COLUMNS = (
    ("runtime", "Runtime", 11),
    ("name", "Name", 14),
    ("pid", "Init PID", 8),
    ("procs", "Procs", 5),
    ("ext", "Ext", 3),
    ("check", "Check", 17),  # the CLI's verdict words, "NO KNOWN BLOCKERS" whole
)


def host_label(host: str) -> Text:
    """A host as the 14-column hosts list shows it: the name, then (dim) how it is reached.

    Why not the DEST string: ``netns:ctlab-ctui`` or ``ssh://root@db1:2222``
    wrapped mid-word in the narrow list; the full DEST is in the title bar.
    """
    kind, name = "this host", host
    if host.startswith("netns:"):
        kind, name = "netns", host[6:]
    elif host.startswith("ssh://"):
        rest = host[6:].rstrip("/")
        user, _, rest = rest.rpartition("@")
        name, port = rest, ""
        if rest.count(":") == 1 or (rest.startswith("[") and "]:" in rest):
            name, _, port = rest.rpartition(":")
        kind = "ssh" + (f" {user}@" if user else "") + (f" :{port}" if port else "")
    elif host != "local":
        kind = ""
    out = Text(name)
    if kind:
        out.append(f"\n{kind}", style="dim")
    return out


class ContainersScreen(BaseScreen):
    SCOPE = "containers"
    BINDINGS = keymap.bindings(SCOPE)

    def __init__(self) -> None:
        super().__init__()
        self.host = ""
        self.containers: dict[str, Container] = {}
        self.filter_text = ""
        self._timer: Timer | None = None
        self._last_error = ""
        self._stale = False
        self.scans = 0
        self._host_down: dict[str, bool] = {}  # host -> last scan failed (marked in the hosts list)
        self._select_name = ""  # select this container (by name) when the next scan lists it

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="containers-body"):
            if len(self.console.hosts) > 1:
                yield OptionList(*(host_label(h) for h in self.console.hosts), id="hosts")
            with Vertical(id="containers-main"):
                yield Input(placeholder="filter: name, runtime or id (esc clears)", id="filter")
                table: DataTable[object] = DataTable(id="containers", cursor_type="row", zebra_stripes=True)
                for key, label, width in COLUMNS:
                    table.add_column(label, key=key, width=width)
                yield table
                yield Static("scanning…", id="containers-status", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.host = self.console.hosts[0]
        self.sub_title = f"host {self.host}"
        self.query_one("#filter", Input).display = False
        self.query_one("#containers", DataTable).focus()
        self.scan()

    # --------------------------------------------------------------- polling
    @work(thread=True, exclusive=True, exit_on_error=False, group="scan")
    def scan(self) -> None:
        """Scan the current host in a thread; the result arrives as a message."""
        host = self.host
        worker = get_current_worker()
        try:
            found = self.backend.list_containers(host)
        except Exception as exc:  # shown once, poll continues
            if not worker.is_cancelled:
                self.post_message(ScanFailed(host, exc))
            return
        if not worker.is_cancelled:
            self.post_message(ContainersLoaded(host, found))

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        interval = self.console.refresh_interval
        self._timer = self.set_timer(interval, self.scan) if interval > 0 else None

    def on_containers_loaded(self, message: ContainersLoaded) -> None:
        self._mark_host(message.host, down=False)
        if message.host != self.host:
            return  # a scan of the previous host finished after a switch
        self.scans += 1
        self._last_error = ""
        fresh = {c.id: c for c in message.containers}
        changed = fresh != self.containers
        self.containers = fresh
        if self.is_current and (changed or self._stale or self.scans == 1):
            self.sync_table()
        elif changed:
            self._stale = True  # painted when the operator comes back (on_screen_resume)
        if self._select_name:
            self._select_by_name()
        if self.scans == 1:
            self.call_after_refresh(self.console.settle_gc)
        self._rearm()

    def on_scan_failed(self, message: ScanFailed) -> None:
        """One error panel per outage of a host; then only the status line and the hosts list say it.

        Why per outage, not per distinct message: an unreachable agent fails in
        slightly different words from one attempt to the next (exited / went
        away), and each new wording used to stack another panel every 2 s.
        """
        first = not self._host_down.get(message.host, False)
        self._mark_host(message.host, down=True)
        if message.host == self.host:
            text = str(message.error)
            self._last_error = text
            if first:
                self.console.show_error(message.error, title=f"Scanning {message.host}")
            interval = self.console.refresh_interval
            again = f" · retrying every {interval:g} s" if interval > 0 else " · r retries"
            self.query_one("#containers-status", Static).update(f"✗ {text}{again}")
        self._rearm()

    def _mark_host(self, host: str, down: bool) -> None:
        """Show in the hosts list which host could not be scanned (so the operator sees it from any host)."""
        if self._host_down.get(host, False) == down or len(self.console.hosts) < 2:
            self._host_down[host] = down
            return
        self._host_down[host] = down
        prompt = host_label(host)
        if down:
            prompt.append("\n✗ unreachable", style="bold red")
        self.query_one("#hosts", OptionList).replace_option_prompt_at_index(self.console.hosts.index(host), prompt)

    def on_screen_resume(self) -> None:
        if self.containers:
            self.sync_table()  # new scans, or badges changed (a check ran on another screen)

    # ------------------------------------------------------------------ table
    def visible_containers(self) -> list[Container]:
        f = self.filter_text.lower()
        rows = [
            c
            for c in self.containers.values()
            if not f or f in c.name.lower() or f in c.runtime.lower() or f in c.id.lower()
        ]
        return sorted(rows, key=lambda c: (c.name, c.id))

    def _cells(self, c: Container) -> dict[str, object]:
        reports = self.console.reports
        n_ext = len(c.externals())
        return {
            "runtime": plain(c.runtime),
            "name": plain(c.name),
            "pid": plain(c.init_pid),
            "procs": plain(len(c.processes)),
            "ext": Text(str(n_ext), style="bold" if n_ext else "dim"),
            "check": verdict_badge(self.app, reports.get(self.console.report_key(self.host, c.id))),
        }

    def sync_table(self) -> None:
        """Bring the table to the visible containers, touching only rows that changed."""
        self._stale = False
        table = self.query_one("#containers", DataTable)
        wanted = self.visible_containers()
        wanted_keys = [c.id for c in wanted]
        current = [rk.value for rk in table.rows]
        with self.app.batch_update():
            if current != wanted_keys[: len(current)] or len(current) > len(wanted_keys):
                # order or membership changed: rebuild (rare; keeps sorting simple)
                selected = self.selected_id()
                table.clear()
                for c in wanted:
                    table.add_row(*self._cells(c).values(), key=c.id)
                if selected in wanted_keys:
                    table.move_cursor(row=wanted_keys.index(selected))
            else:
                for c in wanted[: len(current)]:
                    row = table.get_row(c.id)
                    for (col, value), old in zip(self._cells(c).items(), row, strict=True):
                        if value != old:
                            table.update_cell(c.id, col, value)
                for c in wanted[len(current) :]:
                    table.add_row(*self._cells(c).values(), key=c.id)
        n_ext = sum(1 for c in self.containers.values() if c.externals())
        shown = f"{len(wanted)} of {len(self.containers)}" if self.filter_text else str(len(wanted))
        status = f"{shown} containers on {self.host} · {n_ext} with external items"
        if not self.containers:
            status = f"no containers found on {self.host} (rescanning every {self.console.refresh_interval:g} s)"
        if self.filter_text:
            status += f" · filter “{self.filter_text}”"
        self.query_one("#containers-status", Static).update(status)

    def selected_id(self) -> str | None:
        table = self.query_one("#containers", DataTable)
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except Exception:
            return None
        return str(key.value) if key.value is not None else None

    def selected(self) -> Container | None:
        cid = self.selected_id()
        if cid is None:
            self.notify("no container selected", severity="warning", markup=False)
            return None
        return self.containers.get(cid)

    # ---------------------------------------------------------------- events
    @on(DataTable.RowSelected, "#containers")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_detail()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.sync_table()

    @on(Input.Submitted, "#filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        self.query_one("#containers", DataTable).focus()

    @on(OptionList.OptionHighlighted, "#hosts")
    def _host_chosen(self, event: OptionList.OptionHighlighted) -> None:
        host = self.console.hosts[event.option_index]
        if host != self.host:
            self.switch_host(host)

    async def show_on(self, host: str, name: str) -> None:
        """Show ``host`` (added to the hosts list if new) with container ``name`` selected once scanned."""
        if host not in self.console.hosts:
            self.console.hosts.append(host)
            if len(self.console.hosts) == 2:
                hosts = OptionList(*(host_label(h) for h in self.console.hosts), id="hosts")
                with self.prevent(OptionList.OptionHighlighted):
                    await self.query_one("#containers-body", Horizontal).mount(hosts, before=0)
                    hosts.highlighted = self.console.hosts.index(self.host)
            else:
                self.query_one("#hosts", OptionList).add_option(host_label(host))
        self._select_name = name
        if self.filter_text:
            self.action_clear_filter()  # the whole list of that host, with it selected
        self.query_one("#containers", DataTable).focus()
        if host != self.host:
            with self.prevent(OptionList.OptionHighlighted):
                self.query_one("#hosts", OptionList).highlighted = self.console.hosts.index(host)
            self.switch_host(host)
        else:
            self.action_refresh()

    def _select_by_name(self) -> None:
        table = self.query_one("#containers", DataTable)
        keys = [str(rk.value) for rk in table.rows]
        for n, key in enumerate(keys):
            c = self.containers.get(key)
            if c is not None and c.name == self._select_name:
                table.move_cursor(row=n)
                self._select_name = ""
                self.query_one("#containers-status", Static).update(
                    f"{c.name} now runs on {self.host} (id {c.id}) · {len(self.containers)} containers here"
                )
                return

    def switch_host(self, host: str) -> None:
        self.host = host
        self.refresh_bindings()
        self.sub_title = f"host {host}"
        self.containers = {}
        self.query_one("#containers", DataTable).clear()
        self.query_one("#containers-status", Static).update(f"scanning {host}…")
        self.scan()

    # --------------------------------------------------------------- actions
    def offer(self, action: str) -> bool | None:
        """``h`` is offered (and in the footer) only when there is another host to go to."""
        if action in ("rules", "migrate"):
            return not self.backend.is_remote(self.host)  # they run where the container is (see refuse_remote)
        if action == "next_host":
            return len(self.console.hosts) > 1
        return True

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.sync_table()
        self.query_one("#containers", DataTable).focus()

    def action_refresh(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.query_one("#containers-status", Static).update(f"scanning {self.host}…")
        self.scan()

    def action_next_host(self) -> None:
        hosts = self.console.hosts
        host = hosts[(hosts.index(self.host) + 1) % len(hosts)]
        if len(hosts) > 1:
            self.query_one("#hosts", OptionList).highlighted = hosts.index(host)
        self.switch_host(host)

    def action_open_detail(self) -> None:
        from ctconsole.ui.screens.detail import DetailScreen

        if c := self.selected():
            self.app.push_screen(DetailScreen(c, self.host))

    def action_check(self) -> None:
        from ctconsole.ui.screens.report import ReportScreen

        if c := self.selected():
            self.app.push_screen(ReportScreen(c, host=self.host))

    def action_rules(self) -> None:
        from ctconsole.ui.screens.rules import RulesScreen

        if (c := self.selected()) and not self.refuse_remote(self.host, "Editing rules"):
            self.app.push_screen(RulesScreen(c))

    def action_migrate(self) -> None:
        from ctconsole.ui.screens.migrate import MigrateScreen

        if (c := self.selected()) and not self.refuse_remote(self.host, "Migrating"):
            self.app.push_screen(MigrateScreen(c))

    def action_quit(self) -> None:
        self.app.exit(0)
