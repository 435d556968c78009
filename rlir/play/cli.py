"""Argument parser of this verb (filled in by the feature's implementation)."""
from __future__ import annotations


def add_play_parser(sub, common) -> None:
    """Register the verb on the top-level subparsers (imports stay light: the parser is built on every call)."""
