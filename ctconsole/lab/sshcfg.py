"""Root's ssh client trusts and reaches the isolated lab hosts: known_hosts lines and a config block.

Why in root's own files: ``ctconsole migrate --to ssh://root@ADDR`` runs the
system OpenSSH client exactly as the operator would, so the lab must make plain
``ssh root@ADDR`` work (host key known, our key offered) without touching
anything else. Every line we add is marked, so removing them is exact:

- ``~root/.ssh/known_hosts``: ``ADDR ssh-ed25519 KEY ctconsole-lab:NAME`` (the
  marker is the key's comment field, which ssh ignores);
- ``~root/.ssh/config``: a marked block at the top that ``Include``s the lab's
  own config file (a ``Host ADDR`` entry per isolated host with the lab's
  IdentityFile). OpenSSH restores the Host/Match context after an Include, so
  the block cannot change how the operator's own entries apply.
Files are rewritten atomically (temp file + rename) with their mode kept; a
file the lab created and that ends up empty is removed again.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

KNOWN_MARK = "ctconsole-lab:"
BLOCK_BEGIN = "# >>> ctconsole lab {include} (managed by `ctconsole lab host add/del`; do not edit) >>>"
BLOCK_END = "# <<< ctconsole lab {include} <<<"


def ssh_dir() -> Path:
    """root's ~/.ssh (from the password database: $HOME may point elsewhere in tests)."""
    return Path(pwd.getpwuid(0).pw_dir) / ".ssh"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    if not text.strip():
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.ctlab-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _without_marked(text: str, name: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.rstrip().endswith(f" {KNOWN_MARK}{name}")]


def add_known_host(name: str, address: str, host_pubkey: str) -> None:
    """Trust ``host_pubkey`` (``TYPE BASE64 [comment]``) for ``address``; replaces our earlier line."""
    path = ssh_dir() / "known_hosts"
    # ours for this name, and any line of ours for the same address (a lab that died without `del`)
    lines = [ln for ln in _without_marked(_read(path), name)
             if not (ln.split()[:1] == [address] and f" {KNOWN_MARK}" in ln)]
    kind, key = host_pubkey.split()[:2]
    lines.append(f"{address} {kind} {key} {KNOWN_MARK}{name}")
    _write(path, "\n".join(lines) + "\n")


def remove_known_host(name: str) -> None:
    path = ssh_dir() / "known_hosts"
    text = _read(path)
    if not text:
        return
    lines = _without_marked(text, name)
    _write(path, "\n".join(lines) + "\n" if lines else "")


def known_host_lines(name: str) -> list[str]:
    return [ln for ln in _read(ssh_dir() / "known_hosts").splitlines() if ln.endswith(f" {KNOWN_MARK}{name}")]


def _strip_block(text: str, include: Path) -> list[str]:
    """``text`` without our block (one per lab state dir, so two labs never remove each other's)."""
    begin, end = BLOCK_BEGIN.format(include=include), BLOCK_END.format(include=include)
    out: list[str] = []
    inside = False
    for ln in text.splitlines():
        if ln.strip() == begin:
            inside = True
        elif inside and ln.strip() == end:
            inside = False
        elif not inside:
            out.append(ln)
    return out


def write_lab_config(include: Path, entries: dict[str, str], identity: Path,
                     proxies: dict[str, str] | None = None) -> None:
    """Write the lab's own ssh config (``Host ADDR`` per isolated host) and hook it into root's config.

    ``entries`` maps host name -> address; with none left the block is removed again.
    ``proxies`` maps host name -> a ``ProxyCommand`` that passes a connected socket
    back (``ProxyUseFdpass``): how this host reaches one whose link ends in a
    namespace of the lab's (:mod:`ctconsole.lab.edge`).
    """
    if entries:
        body = ["# ctconsole lab isolated hosts (generated; `ctconsole lab host del NAME` removes them)"]
        for name, address in sorted(entries.items()):
            body += [
                f"# lab host {name}",
                f"Host {address}",
                "    User root",
                f"    IdentityFile {identity}",
                "    IdentitiesOnly yes",
                "    BatchMode yes",
            ]
            if proxy := (proxies or {}).get(name):
                body += [f"    ProxyCommand {proxy}", "    ProxyUseFdpass yes"]
        include.parent.mkdir(parents=True, exist_ok=True)
        include.write_text("\n".join(body) + "\n")
        os.chmod(include, 0o600)
    else:
        include.unlink(missing_ok=True)
    path = ssh_dir() / "config"
    rest = _strip_block(_read(path), include)
    block = [BLOCK_BEGIN.format(include=include), f"Include {include}", BLOCK_END.format(include=include)]
    block = block if entries else []
    _write(path, "\n".join(block + rest) + "\n" if block or rest else "")


def has_block(include: Path) -> bool:
    return BLOCK_BEGIN.format(include=include) in _read(ssh_dir() / "config")


__all__ = [
    "add_known_host",
    "has_block",
    "known_host_lines",
    "remove_known_host",
    "ssh_dir",
    "write_lab_config",
]
