"""Command palette provider: every action of the current screen and the app.

Why generated from :mod:`ctconsole.ui.keymap`: the palette can never miss an
action the keys offer, and it shows the (possibly remapped) key beside each.
"""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from ctconsole.ui import keymap


class ActionsProvider(Provider):
    """Offers the actions of the screen below the palette, then the app-wide ones."""

    def _candidates(self) -> list[tuple[str, str, keymap.ActionSpec]]:
        screen = self.screen
        scope = getattr(screen, "SCOPE", "")
        app_keymap = getattr(self.app, "_keymap", {})
        out = []
        for spec in [*keymap.actions(scope), *keymap.actions("app")]:
            if spec.action in ("command_palette",):
                continue
            title = f"{keymap.SCOPE_TITLES.get(spec.scope, spec.scope)}: {spec.help}"
            key = keymap.effective_key(spec, app_keymap)
            out.append((title, key, spec))
        return out

    async def _run(self, spec: keymap.ActionSpec) -> None:
        target = self.app if spec.scope == "app" else self.screen
        await target.run_action(spec.action)

    async def discover(self) -> Hits:
        for title, key, spec in self._candidates():
            yield DiscoveryHit(title, partial(self._run, spec), help=f"key: {key}")

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, key, spec in self._candidates():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self._run, spec), help=f"key: {key}")
