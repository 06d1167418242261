"""Container detail: the inventory by category, external items highlighted.

Why a panel under the tabs: an external item is only useful to the operator
with its reason and remedy, so selecting any row (or tree node) shows them;
``x`` jumps between external items so they can be reviewed without a mouse.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane, Tree

from ctconsole.model import Container, External, Process
from ctconsole.ui import keymap
from ctconsole.ui.messages import DetailLoaded
from ctconsole.ui.screens.base import BaseScreen
from ctconsole.ui.widgets.render import cell, ext_mark, why_text

# tab id -> (title, columns)
TABS: dict[str, tuple[str, tuple[str, ...]]] = {
    "processes": ("Procs", ()),
    "sockets": ("Socks", ("!", "Family", "Type", "State", "Inode", "Address / peer")),
    "ttys": ("TTYs", ("!", "Path", "Kind", "Index", "Master held by")),
    "devices": ("Devs", ("!", "Path", "Kind", "Major:minor", "Native")),
    "mounts": ("Mounts", ("!", "Mountpoint", "Type", "Source", "Options")),
    "interfaces": ("Ifaces", ("!", "Name", "Kind", "Up", "Addresses", "Peer")),
    "other": ("Files", ("!", "Kind", "Target")),
}


def _row(cat: str, item: Any) -> tuple[str, list[object]]:
    """(title for the why panel, cells) of one item."""
    if cat == "sockets":
        addr = item.path or item.local or ""
        if item.peer_path or item.remote:
            addr += f" -> {item.peer_path or item.remote}"
        if item.peer_holder:
            addr += f" ({item.peer_holder})"
        return f"{item.family} socket {item.inode}", [item.family, item.type, item.state, item.inode, addr]
    if cat == "ttys":
        return f"tty {item.path}", [item.path, item.kind, item.index, item.master_holder]
    if cat == "devices":
        return f"device {item.path}", [
            item.path,
            item.kind,
            f"{item.major}:{item.minor}",
            "yes" if item.supported else "no",
        ]
    if cat == "mounts":
        return f"mount {item.mountpoint}", [item.mountpoint, item.fstype, item.source, item.options]
    if cat == "interfaces":
        peer = f"{item.peer_ifname}@{item.peer_netns}" if item.peer_ifname else item.parent
        return f"interface {item.name}", [
            item.name,
            item.kind,
            "up" if item.up else "down",
            " ".join(item.addresses),
            peer,
        ]
    if cat == "fds":
        return f"{item.kind} fd", [item.kind, item.target]
    # files
    flags = " (deleted)" if item.deleted else ""
    return f"file {item.path}", ["file", item.path + flags]


class DetailScreen(BaseScreen):
    SCOPE = "detail"
    BINDINGS = keymap.bindings(SCOPE)

    def __init__(self, container: Container, host: str = "local") -> None:
        super().__init__()
        self.container = container
        self.host = host
        self.items: dict[str, list[tuple[str, External | None]]] = {}  # tab -> per row (title, external)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="detail-summary", markup=False)
        with TabbedContent(id="detail-tabs"):
            for tab, (title, cols) in TABS.items():
                with TabPane(title, id=f"tab-{tab}"):
                    if tab == "processes":
                        yield Tree("processes", id="proc-tree")
                    else:
                        t: DataTable[object] = DataTable(id=f"table-{tab}", cursor_type="row")
                        for c in cols:
                            t.add_column(c, key=c)
                        yield t
        yield Static(id="why", classes="why-panel", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.title = f"{self.container.name}"
        self.sub_title = f"{self.container.runtime} on {self.host}"
        self.render_container()
        self.query_one("#proc-tree", Tree).focus()
        self.load()

    @work(thread=True, exclusive=True, exit_on_error=False, group="detail")
    def load(self) -> None:
        """Fetch the full inventory (the list's copy may be a lighter scan)."""
        self.post_message(DetailLoaded(self.backend.container_detail(self.container.id, self.host)))

    def on_detail_loaded(self, message: DetailLoaded) -> None:
        if message.container != self.container:
            self.container = message.container
            self.render_container()

    # ---------------------------------------------------------------- render
    def render_container(self) -> None:
        c = self.container
        ext = c.externals()
        summary = Text()
        summary.append(f"{c.name}", style="bold")
        summary.append(f" {c.runtime} · init {c.init_pid}")
        if c.controller:
            summary.append(f" · by {c.controller}")
        # line 2, not line 1: at 80 columns line 1 wrapped and pushed the external count out of view
        summary.append(f"\n{len(ext)} external item(s)", style="bold" if ext else "dim")
        if ext:
            summary.append(": " + ", ".join(sorted({cat for cat, _ in ext})))
        summary.append(f" · own ns {','.join(c.own_namespaces) or '-'}", style="dim")
        self.query_one("#detail-summary", Static).update(summary)
        self._render_tree()
        cats: dict[str, list[tuple[str, Any]]] = {
            "sockets": [("sockets", s) for s in c.sockets],
            "ttys": [("ttys", t) for t in c.ttys],
            "devices": [("devices", d) for d in c.devices],
            "mounts": [("mounts", m) for m in c.mounts],
            "interfaces": [("interfaces", i) for i in c.interfaces],
            "other": [("fds", f) for f in c.fds] + [("files", f) for f in c.files],
        }
        for tab, items in cats.items():
            table = self.query_one(f"#table-{tab}", DataTable)
            table.clear()
            self.items[tab] = []
            for n, (cat, item) in enumerate(items):
                title, values = _row(cat, item)
                table.add_row(
                    ext_mark(self.app, item.external),
                    *(cell(self.app, v, item.external) for v in values),
                    key=f"{tab}:{n}",
                )
                self.items[tab].append((title, item.external))
            tabs = self.query_one("#detail-tabs", TabbedContent)
            n_ext = sum(1 for _, e in self.items[tab] if e is not None)
            label = f"{TABS[tab][0]} {len(items)}" + (f"!{n_ext}" if n_ext else "")
            tabs.get_tab(f"tab-{tab}").label = label
        self._show_why("select an item to see why it is (or is not) external; x: next external item", None, plain=True)

    def _render_tree(self) -> None:
        tree: Tree[Process] = self.query_one("#proc-tree", Tree)
        tree.clear()
        c = self.container
        procs = {p.pid: p for p in c.processes}
        children: dict[int, list[Process]] = {}
        roots: list[Process] = []
        for p in c.processes:
            if p.ppid in procs and p.pid != c.init_pid:
                children.setdefault(p.ppid, []).append(p)
            else:
                roots.append(p)
        tree.root.set_label(Text(f"{c.name}: {len(procs)} processes"))
        tree.root.expand()

        def label(p: Process) -> Text:
            t = Text()
            t.append(f"{p.pid}", style="bold")
            t.append(f" ({p.nspid}) {p.name} [{p.state}] uid {p.uid}")
            if p.threads > 1:
                t.append(f" {p.threads} thr")
            if p.external is not None:
                t = cell(self.app, t.plain + "  !", p.external)
            return t

        def add(node: Any, p: Process) -> None:
            kids = children.get(p.pid, [])
            if kids:
                sub = node.add(label(p), data=p, expand=True)
                for k in sorted(kids, key=lambda x: x.pid):
                    add(sub, k)
            else:
                node.add_leaf(label(p), data=p)

        for r in sorted(roots, key=lambda x: x.pid):
            add(tree.root, r)
        tree.cursor_line = 1 if roots else 0
        n_ext = sum(1 for p in c.processes if p.external is not None)
        tab_label = f"Procs {len(procs)}" + (f"!{n_ext}" if n_ext else "")
        self.query_one("#detail-tabs", TabbedContent).get_tab("tab-processes").label = tab_label

    def _show_why(self, title: str, external: External | None, plain: bool = False) -> None:
        panel = self.query_one("#why", Static)
        if plain:
            panel.update(Text(title, style="dim"))
        else:
            panel.update(why_text(self.app, title, external))

    # ---------------------------------------------------------------- events
    @on(Tree.NodeHighlighted, "#proc-tree")
    def _proc(self, event: Tree.NodeHighlighted[Process]) -> None:
        p = event.node.data
        if p is not None:
            self._show_why(f"process {p.pid} {p.cmdline}", p.external)

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        tabs = self.query_one("#detail-tabs", TabbedContent)
        if event.data_table.id != tabs.active.replace("tab-", "table-"):
            return  # a hidden tab's table initialising
        key = str(event.row_key.value)
        tab, _, idx = key.partition(":")
        if tab in self.items and idx.isdigit() and int(idx) < len(self.items[tab]):
            title, ext = self.items[tab][int(idx)]
            self._show_why(title, ext)

    @on(TabbedContent.TabActivated)
    def _tab(self, event: TabbedContent.TabActivated) -> None:
        pane = event.pane
        widget = pane.query_one("DataTable, Tree")
        widget.focus()
        if isinstance(widget, DataTable) and widget.row_count:
            tab = (pane.id or "").removeprefix("tab-")
            title, ext = self.items[tab][widget.cursor_row]
            self._show_why(title, ext)
        elif isinstance(widget, DataTable):
            self._show_why("nothing of this kind in the container", None, plain=True)

    # --------------------------------------------------------------- actions
    def _tab_ids(self) -> list[str]:
        return [f"tab-{t}" for t in TABS]

    def action_next_tab(self) -> None:
        tabs = self.query_one("#detail-tabs", TabbedContent)
        ids = self._tab_ids()
        tabs.active = ids[(ids.index(tabs.active) + 1) % len(ids)]

    def action_prev_tab(self) -> None:
        tabs = self.query_one("#detail-tabs", TabbedContent)
        ids = self._tab_ids()
        tabs.active = ids[(ids.index(tabs.active) - 1) % len(ids)]

    def action_next_external(self) -> None:
        """Move to the next external item, across tabs."""
        tabs = self.query_one("#detail-tabs", TabbedContent)
        order = list(TABS)
        cur = tabs.active.removeprefix("tab-")
        start_tab = order.index(cur)
        for step in range(len(order) + 1):
            tab = order[(start_tab + step) % len(order)]
            if tab == "processes":
                continue
            rows = self.items.get(tab, [])
            table = self.query_one(f"#table-{tab}", DataTable)
            begin = table.cursor_row + 1 if step == 0 else 0
            for n in range(begin, len(rows)):
                if rows[n][1] is not None:
                    if tab != cur:
                        tabs.active = f"tab-{tab}"
                    table.focus()
                    table.move_cursor(row=n)
                    self._show_why(*rows[n])
                    return
        self.notify("no external items", timeout=2, markup=False)

    def action_check(self) -> None:
        from ctconsole.ui.screens.report import ReportScreen

        self.app.push_screen(ReportScreen(self.container, host=self.host))

    def action_rules(self) -> None:
        from ctconsole.ui.screens.rules import RulesScreen

        if not self.refuse_remote(self.host, "Editing rules"):
            self.app.push_screen(RulesScreen(self.container))

    def action_migrate(self) -> None:
        from ctconsole.ui.screens.migrate import MigrateScreen

        if not self.refuse_remote(self.host, "Migrating"):
            self.app.push_screen(MigrateScreen(self.container))
