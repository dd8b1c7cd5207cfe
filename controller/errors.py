"""Errors a user can fix: the CLI prints them as one line and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a file, a field, a line, a name): the message says what is wrong and where."""
