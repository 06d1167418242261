"""Edit and save rules files without losing the operator's comments, and save atomically.

Why tomlkit: it keeps every comment, blank line, quote style and key order of
the file it parsed, and writes back exactly what it read. Programs (the TUI
editor, ``rules suggest``) only ever add, replace or delete whole rule tables
or container blocks, so each edit here is a few tomlkit calls on the parsed
document: a changed value keeps its line's indentation and ``# comment``; a
deleted table takes with it the comment lines directly above its header.

The one thing tomlkit leaves to its caller is *where the text between two
tables belongs*: the blank lines and comments after a table's last key sit in
that table's body, but they introduce the *next* header. :func:`_gap_before`
and :func:`_tail` find that text so an added table goes after the last key
(not after the next block's comment) and a deleted one leaves the gap as it
was. Every edit is re-parsed before it is returned, so a bug here can never
write a file that does not load; a file whose layout tomlkit would not
reproduce (an array of tables split by another table) is refused, not
reordered.

Saving writes a temporary file in the same directory, fsyncs it, renames it
over the original (keeping its mode and owner) and fsyncs the directory:
after a crash there is either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ctconsole.errors import CtError, UsageError
from ctconsole.remap.model import Rule, RuleRef, RuleSet, Selector
from ctconsole.remap.parse import TomlSyntaxError, build_ruleset, parse_document, parse_text, read_text

RULE_INDENT = "  "

# ---------------------------------------------------------------- values


def _item(value: Any) -> Any:
    """A tomlkit item for ``value``; tables and lists always inline (a rule is one table)."""
    import tomlkit

    if isinstance(value, dict):
        if not value:
            return tomlkit.inline_table()
        # spelled "{ k = v }" like the examples in docs/remap.md (tomlkit would write "{k = v}")
        inner = ", ".join(f"{render_key(str(k))} = {_item(v).as_string()}" for k, v in value.items())
        return tomlkit.parse(f"x = {{ {inner} }}\n")["x"]
    if isinstance(value, list | tuple):
        a = tomlkit.array()
        for v in value:
            a.append(_item(v))
        return a
    try:
        return tomlkit.item(value)
    except Exception as exc:  # tomlkit's ConvertError
        raise TypeError(f"cannot write {type(value).__name__} to TOML") from exc


def render_key(key: str) -> str:
    """A key as TOML writes it (bare when it can be, quoted otherwise)."""
    import tomlkit

    return str(tomlkit.key(key).as_string())


def render_value(value: Any) -> str:
    """A TOML inline value (strings, bools, ints, floats, lists, inline tables)."""
    return str(_item(value).as_string())


# ---------------------------------------------------------------- new text (suggest, new files)


def _rule_items(rule: Rule) -> list[tuple[str, Any]]:
    return [("kind", rule.kind), *rule.fields.items()]


def render_rule(rule: Rule, *, defaults: bool = False, indent: str = RULE_INDENT,
                comments: dict[str, str] | None = None, header_comment: list[str] | None = None) -> list[str]:
    """Lines of one ``[[container.rule]]`` (or ``[[defaults.rule]]``) table.

    ``comments`` adds ``# text`` after a key's value; ``header_comment`` adds
    ``# lines`` above the header (say *why* the rule is there).
    """
    ind = "" if defaults else indent
    out = [f"{ind}# {c}" if c else f"{ind}#" for c in (header_comment or [])]
    out.append(f"{ind}[[{'defaults' if defaults else 'container'}.rule]]")
    for k, v in _rule_items(rule):
        line = f"{ind}{render_key(k)} = {render_value(v)}"
        if comments and comments.get(k):
            line += f"  # {comments[k]}"
        out.append(line)
    return out


def _selector_fields(sel: Selector) -> dict[str, str]:
    return {k: getattr(sel, k) for k in ("name", "runtime", "id", "to") if getattr(sel, k)}


def render_selector(sel: Selector) -> str:
    return f"match = {render_value(_selector_fields(sel))}"


def render_container(sel: Selector, rules: list[Rule] | tuple[Rule, ...] = (),
                     header_comment: list[str] | None = None) -> list[str]:
    out = [f"# {c}" if c else "#" for c in (header_comment or [])]
    out += ["[[container]]", render_selector(sel)]
    for r in rules:
        out.append("")
        out += render_rule(r)
    return out


def render_ruleset(rs: RuleSet, header_comment: list[str] | None = None) -> str:
    """A whole new file (used when there is no file yet to preserve)."""
    out = [f"# {c}" if c else "#" for c in (header_comment or [])]
    out.append(f"version = {rs.version}")
    short = [r for r in rs.defaults.rules if r.shorthand]
    full = [r for r in rs.defaults.rules if not r.shorthand]
    if short:
        out += ["", "[defaults]"]
        out += [f"{r.shorthand} = {render_value(r.get('mode'))}" for r in short]
    for r in full:
        out.append("")
        out += render_rule(r, defaults=True)
    for scope in rs.containers:
        out.append("")
        out += render_container(scope.selector or Selector(name="*"), scope.rules)
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the text between tables


def _lines(text: str) -> list[str]:
    """Lines with their LF (only LF: a U+2028 in a comment is not a line end)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def _blank(line: str) -> bool:
    return not line.strip(" \t\r\n")


def _keyless_run(body: list[Any], end: int) -> list[int]:
    """Indexes of the comment / blank-line items directly before ``body[end]`` (``end = len`` for the tail)."""
    i = end
    while i > 0 and body[i - 1][0] is None:
        i -= 1
    return list(range(i, end))


def _take(body: list[Any], idxs: list[int]) -> str:
    """Their text, then blank them in place (indexes stay valid: tomlkit maps keys to positions)."""
    from tomlkit.items import Whitespace

    text = "".join(body[i][1].as_string() for i in idxs)
    for i in idxs:
        body[i] = (None, Whitespace(""))
    return text


def _body_of(node: Any) -> list[Any]:
    """The item list of a table or of the document itself."""
    from tomlkit.container import Container

    return node.body if isinstance(node, Container) else node.value.body


def _last_table(table: Any) -> Any:
    """The table whose body holds the text after a block (its last rule, or itself)."""
    from tomlkit.items import AoT, Table

    while True:
        keyed = [v for k, v in _body_of(table) if k is not None]
        last = keyed[-1] if keyed else None
        if isinstance(last, AoT) and last.body:
            table = last.body[-1]
        elif isinstance(last, Table) and not last.is_super_table():
            table = last
        else:
            return table


def _tail(table: Any) -> str:
    """Take the text after the last key of a block (the gap that introduces the next header)."""
    body = _body_of(_last_table(table))
    return _take(body, _keyless_run(body, len(body)))


def _append_text(table: Any, text: str) -> None:
    from tomlkit.items import Whitespace

    if text:
        _body_of(_last_table(table)).append((None, Whitespace(text)))


def _gap_before(parent: Any, key: str, aot: Any, i: int) -> str:
    """Take the text between block ``i - 1`` (or what precedes the array) and the header of ``aot[i]``,
    header indentation excluded (it stays in the header)."""
    from tomlkit.items import AoT, Table

    if i > 0:
        return _tail(aot[i - 1])
    body = _body_of(parent)
    j = next(n for n, (k, v) in enumerate(body) if k is not None and k.key == key and v is aot)
    run = _keyless_run(body, j)
    before = body[run[0] - 1 if run else j - 1][1] if (run[0] if run else j) > 0 else None
    # a table above the array ([defaults] over the first [[container]]) holds the start of the gap
    if isinstance(before, AoT) and before.body:
        before = before.body[-1]
    prev = _tail(before) if isinstance(before, Table) and not before.is_super_table() else ""
    return prev + _take(body, run)


def _split_attached(gap: str) -> tuple[str, str]:
    """(detached, attached): the comment lines directly above a header (no blank line between) are attached."""
    lines = _lines(gap)
    i = len(lines)
    while i > 0 and lines[i - 1].lstrip().startswith("#"):
        i -= 1
    return "".join(lines[:i]), "".join(lines[i:])


def _join_gaps(a: str, b: str) -> str:
    """Two gaps made one, without a double blank line where they meet."""
    la, lb = _lines(a), _lines(b)
    if la and lb and _blank(la[-1]) and _blank(lb[0]):
        lb = lb[1:]
    return "".join(la + lb)


def _remove_block(parent: Any, key: str, aot: Any, i: int) -> None:
    """Delete ``aot[i]`` with the comments attached to its header; the gaps around it become one."""
    table = aot[i]
    before = _gap_before(parent, key, aot, i) + re.sub(r"[^\n]*$", "", table.trivia.indent)
    gap = _join_gaps(_split_attached(before)[0], _tail(table))
    del aot[i]
    if i < len(aot):
        aot[i].trivia.indent = gap + aot[i].trivia.indent
    elif i > 0:
        _append_text(aot[i - 1], gap)
    else:
        del parent[key]
        _append_text(parent, gap)


def _new_table(rule_items: list[tuple[str, Any]], indent: str) -> Any:
    """A new table whose keys are indented like its header."""
    import tomlkit

    t = tomlkit.table()
    for k, v in rule_items:
        item = _item(v)
        item.trivia.indent = indent
        t.append(k, item)
    t.trivia.indent = indent
    return t


def _add_block(parent: Any, key: str, table: Any, header_comment: list[str] | None) -> None:
    """Append ``table`` to the array of tables ``parent[key]`` (made when missing), after the last key
    of the block before it; the text that introduced whatever followed moves below the new block."""
    import tomlkit
    from tomlkit.items import AoT

    existing = parent.get(key) if key in parent else None
    if existing is not None and not isinstance(existing, AoT):
        raise CtError(f"'{key}' is written inline in this file; edit it by hand")
    tail = _tail(existing[-1] if existing else parent)
    ind = re.sub(r"(?s)^.*\n", "", table.trivia.indent)
    comment = "".join(f"{ind}# {c}\n" if c else f"{ind}#\n" for c in (header_comment or []))
    table.trivia.indent = "\n" + comment + ind
    if tail and not _blank(_lines(tail)[0]):
        tail = "\n" + tail
    if existing is not None:
        existing.append(table)
    else:
        parent.append(key, tomlkit.aot())
        parent[key].append(table)
    _append_text(table, tail if tail else "\n")


# ---------------------------------------------------------------- editing


def _open(text: str, path: str) -> tuple[Any, RuleSet]:
    """The tomlkit document of ``text`` and its rules (one parse); refuses a layout tomlkit would rewrite."""
    try:
        doc, pos = parse_document(text)
    except TomlSyntaxError as exc:
        raise UsageError(f"{path}:{exc.line}: cannot edit a file that does not parse: {exc.message}") from None
    if doc.as_string() != text:
        raise CtError(f"{path}: this file's layout cannot be edited without reordering it (an array of "
                      "tables such as [[container]] is split by another table); move the blocks together "
                      "and retry")
    return doc, build_ruleset(doc, pos, path)[0]


def _finish(doc: Any, text: str, path: str) -> tuple[str, RuleSet]:
    """The edited document as text (original newline style, one newline at the end) and its rules,
    re-parsed: an edit that breaks the file is a bug, never written."""
    out = doc.as_string()
    out = re.sub(r"(\r?\n[ \t]*)*\r?\n?\Z", "\n", out, count=1) if out.strip() else ""
    if "\r\n" in text:
        out = re.sub(r"(?<!\r)\n", "\r\n", out)
    return out, _check(out, path)


def _check(text: str, path: str) -> RuleSet:
    """Re-parse an edited text; an edit that breaks the file is a bug, never written."""
    try:
        doc, pos = parse_document(text)
    except TomlSyntaxError as exc:
        raise CtError(f"internal error: editing {path} produced invalid TOML ({exc.message}, line "
                      f"{exc.line}); file not changed") from None
    return build_ruleset(doc, pos, path)[0]


def _scope_rules(rs: RuleSet, container: int | None) -> tuple[Rule, ...]:
    if container is None:
        return rs.defaults.rules
    if not 0 <= container < len(rs.containers):
        raise UsageError(f"no container block #{container}")
    return rs.containers[container].rules


def _block(doc: Any, container: int | None) -> Any:
    """The tomlkit table of container block ``container`` (None = ``[defaults]``, made when missing)."""
    import tomlkit

    if container is None:
        if "defaults" not in doc:
            doc.append("defaults", tomlkit.table(is_super_table=True))
        return doc["defaults"]
    blocks = doc.get("container")
    if blocks is None or not hasattr(blocks, "body") or not 0 <= container < len(blocks):
        raise UsageError(f"no container block #{container}")
    return blocks[container]


def _rule_table(doc: Any, rs: RuleSet, ref: RuleRef) -> tuple[Rule, Any, Any, int]:
    """(rule, its block, the block's rule array, index in it); array None for a [defaults] shorthand key."""
    from tomlkit.items import AoT

    rules = _scope_rules(rs, ref.container)
    if not 0 <= ref.rule < len(rules):
        raise UsageError(f"no rule #{ref.rule + 1} in that block")
    rule = rules[ref.rule]
    block = _block(doc, ref.container)
    if rule.shorthand:
        return rule, block, None, -1
    idx = sum(1 for r in rules[: ref.rule] if not r.shorthand)
    aot = block.get("rule") if "rule" in block else None
    if not isinstance(aot, AoT) or idx >= len(aot):
        raise CtError("this rule is written inline (rule = [...]); edit it by hand")
    return rule, block, aot, idx


def add_rule(text: str, container: int | None, rule: Rule, *, header_comment: list[str] | None = None,
             path: str = "<rules>") -> str:
    """Append ``rule`` to container block ``container`` (None = ``[[defaults.rule]]``)."""
    doc, rs = _open(text, path)
    _scope_rules(rs, container)
    block = _block(doc, container)
    indent = ""
    if container is not None:
        aot = block.get("rule") if "rule" in block else None
        first = aot[0] if aot is not None and hasattr(aot, "body") and len(aot) else None
        indent = re.sub(r"(?s)^.*\n", "", first.trivia.indent) if first is not None else RULE_INDENT
    _add_block(block, "rule", _new_table(_rule_items(rule), indent), header_comment)
    return _finish(doc, text, path)[0]


def replace_rule(text: str, ref: RuleRef, rule: Rule, *, path: str = "<rules>") -> str:
    """Replace the rule at ``ref`` in place, keeping comments and the order of unchanged keys.

    Keys whose value is unchanged are left byte-for-byte alone; changed keys
    get a new value with their indentation and trailing comment kept; removed
    keys are deleted; new keys are appended after the table's last key.
    """
    doc, rs = _open(text, path)
    old, block, aot, idx = _rule_table(doc, rs, ref)
    if aot is None:  # [defaults] shorthand: tcp = "keep" / cgroup_mode = "soft"
        if rule.kind != old.kind or set(rule.fields) != {"mode"}:
            # not expressible as the shorthand: drop it and add a full table
            return add_rule(delete_rule(text, ref, path=path), None, rule, path=path)
        block[old.shorthand] = _item(rule.get("mode"))
        return _finish(doc, text, path)[0]
    table = aot[idx]
    new_items = dict(_rule_items(rule))
    old_items = {"kind": old.kind, **old.fields}
    present = [k.key for k, _ in table.value.body if k is not None]
    for key in present:
        if key not in new_items:
            del table[key]
        elif key not in old_items or old_items[key] != new_items[key]:
            table[key] = _item(new_items[key])
    added = [k for k in new_items if k not in present]
    if added:
        keyed = [v for k, v in table.value.body if k is not None]
        ind = keyed[0].trivia.indent if keyed else re.sub(r"(?s)^.*\n", "", table.trivia.indent)
        tail = _tail(table)
        for k in added:
            table.append(k, _item(new_items[k]))
            table.value.item(k).trivia.indent = ind
        _append_text(table, tail)
    out, new_rs = _finish(doc, text, path)
    got = _scope_rules(new_rs, ref.container)
    if ref.rule >= len(got) or (got[ref.rule].kind, got[ref.rule].fields) != (rule.kind, rule.fields):
        raise CtError("internal error: replacing the rule did not produce the expected table; file not changed")
    return out


def delete_rule(text: str, ref: RuleRef, *, path: str = "<rules>") -> str:
    """Delete the rule at ``ref`` and the comment lines directly above its header."""
    doc, rs = _open(text, path)
    old, block, aot, idx = _rule_table(doc, rs, ref)
    if aot is None:
        del block[old.shorthand]
    else:
        _remove_block(block, "rule", aot, idx)
    return _finish(doc, text, path)[0]


def add_container(text: str, selector: Selector, rules: list[Rule] | tuple[Rule, ...] = (), *,
                  header_comment: list[str] | None = None, path: str = "<rules>") -> str:
    """Append a new ``[[container]]`` block (with rules) after the last one."""
    if not text.strip():
        text = "version = 1\n"
    doc, _ = _open(text, path)
    table = _new_table([("match", _selector_fields(selector))], "")
    _add_block(doc, "container", table, header_comment)
    for r in rules:
        _add_block(table, "rule", _new_table(_rule_items(r), RULE_INDENT), None)
    return _finish(doc, text, path)[0]


def set_match(text: str, container: int, selector: Selector, *, path: str = "<rules>") -> str:
    """Rewrite the ``match = {...}`` of a container block (comment after it kept)."""
    doc, _ = _open(text, path)
    block = _block(doc, container)
    block["match"] = _item(_selector_fields(selector))
    return _finish(doc, text, path)[0]


def delete_container(text: str, container: int, *, path: str = "<rules>") -> str:
    """Delete a whole ``[[container]]`` block with its rules and the comments directly above it."""
    doc, _ = _open(text, path)
    _block(doc, container)
    _remove_block(doc, "container", doc["container"], container)
    return _finish(doc, text, path)[0]


# ---------------------------------------------------------------- saving


def save_text(path: str | Path, text: str, *, expected: str | None = None) -> None:
    """Atomically replace ``path`` with ``text``.

    ``expected``: the text the caller loaded; if the file changed on disk since
    (another editor, another operator), refuse rather than silently clobber.
    """
    p = Path(path)
    if expected is not None:
        try:
            current = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = ""
        if current != expected:
            raise CtError(f"{p} changed on disk since it was loaded; reload it and redo the edit")
    _check(text, str(p))
    directory = p.parent if str(p.parent) else Path(".")
    try:
        st = p.stat()
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _umask() -> int:
    cur = os.umask(0)
    os.umask(cur)
    return cur


# ---------------------------------------------------------------- a document for editors


@dataclass(frozen=True)
class RulesDocument:
    """An open rules file for an editor: its text, the parsed rules, and edits that return new documents.

    Immutable on purpose: the TUI keeps the previous document for undo, and
    ``save()`` refuses to overwrite changes someone made on disk meanwhile.
    """

    path: str
    text: str
    rules: RuleSet
    original: str  # the text as loaded from disk (for the changed-on-disk check)

    @classmethod
    def open(cls, path: str | Path) -> RulesDocument:
        """Load ``path``; a missing file opens as an empty ``version = 1`` document."""
        p = str(path)
        try:
            text = read_text(path)
            original = text
        except UsageError:
            if Path(path).exists():
                raise
            text, original = "version = 1\n", ""
        rs, _ = parse_text(text, p)
        return cls(path=p, text=text, rules=rs, original=original)

    def _with(self, text: str) -> RulesDocument:
        rs, _ = parse_text(text, self.path)
        return replace(self, text=text, rules=rs)

    @property
    def dirty(self) -> bool:
        return self.text != self.original

    def add_rule(self, container: int | None, rule: Rule, header_comment: list[str] | None = None
                 ) -> RulesDocument:
        return self._with(add_rule(self.text, container, rule, header_comment=header_comment, path=self.path))

    def replace_rule(self, ref: RuleRef, rule: Rule) -> RulesDocument:
        return self._with(replace_rule(self.text, ref, rule, path=self.path))

    def delete_rule(self, ref: RuleRef) -> RulesDocument:
        return self._with(delete_rule(self.text, ref, path=self.path))

    def add_container(self, selector: Selector, rules: list[Rule] | tuple[Rule, ...] = (),
                      header_comment: list[str] | None = None) -> RulesDocument:
        return self._with(add_container(self.text, selector, rules, header_comment=header_comment,
                                        path=self.path))

    def set_match(self, container: int, selector: Selector) -> RulesDocument:
        return self._with(set_match(self.text, container, selector, path=self.path))

    def delete_container(self, container: int) -> RulesDocument:
        return self._with(delete_container(self.text, container, path=self.path))

    def save(self) -> RulesDocument:
        """Write atomically (refusing if the file changed on disk); the saved document is clean."""
        save_text(self.path, self.text, expected=self.original)
        return replace(self, original=self.text)
