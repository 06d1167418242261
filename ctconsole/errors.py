"""The project's exception hierarchy.

Why: the CLI and the TUI must never show a traceback. Everything that can go
wrong in front of an operator is raised as a :class:`CtError` carrying a
message written for them, optional detail lines (e.g. CRIU's own log lines
with explanations) and the exit status the CLI should use.
"""

from __future__ import annotations


class CtError(Exception):
    """An error the operator can understand; ``details`` are extra lines to show."""

    exit_code = 1

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])

    def __str__(self) -> str:
        return self.message


class UsageError(CtError):
    """Bad arguments, a malformed file given on the command line, an unknown name."""

    exit_code = 2


class NotFound(UsageError):
    """A container reference (id, name, pid:N, tree:N) that matches nothing."""
