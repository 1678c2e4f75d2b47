"""Subcommands of `optiinfra` that live beside the features they expose.

Every module here defines ``add_parser(subparsers)``; :func:`optiinfra_assets.cli.build_parser` discovers
them, so a new command is one new module. Handlers take ``(args, settings)`` and return an exit code.
"""

import argparse
import math
import unicodedata
from collections.abc import Callable

from optiinfra_assets.config import Settings, prepare_home
from resources.state_store import MAX_ACTOR_CHARS, StateStore, state_store_url


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (and at most MAX_INT), or a message saying why not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    if value > MAX_INT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_INT}, got {value}")
    return value


# The largest whole number an argument may take: a PostgreSQL INTEGER (and far past any real count), so
# that both engines refuse or accept the same value instead of one overflowing.
MAX_INT = 2**31 - 1
# Rows one listing may return: more is a mistake (or a way to exhaust memory), not a request.
MAX_LIMIT = 100_000
MAX_COMMENT_CHARS = 2_000
# Actors the system itself writes as; a person may not sign as one of them.
RESERVED_ACTORS = ("system", "executor", "cli", "reconciler")
RESERVED_ACTOR_PREFIXES = ("policy:", "agent:", "system:")


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {text!r}")
        return value

    return parse


def bounded_float(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [lo, hi] ((lo, hi] with ``lo_open``); nan and inf refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number, got {text!r}") from None
        low_ok = value > lo if lo_open else value >= lo
        if not (math.isfinite(value) and low_ok and value <= hi):
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            raise argparse.ArgumentTypeError(f"must be a finite number in {interval}, got {text!r}")
        return value

    return parse


def bounded_text(max_chars: int, *, allow_empty: bool = True) -> Callable[[str], str]:
    """An argparse type: printable text of at most ``max_chars`` characters (no control characters, so
    no ANSI escape sequence reaches a terminal or the audit log)."""

    def parse(text: str) -> str:
        if len(text) > max_chars:
            raise argparse.ArgumentTypeError(f"at most {max_chars} characters, got {len(text)}")
        bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf") and c not in "\t"), None)
        if bad is not None:
            raise argparse.ArgumentTypeError(f"control character {bad!r} not allowed: {text!r}")
        if not allow_empty and not text.strip():
            raise argparse.ArgumentTypeError("must not be empty")
        return text

    return parse


_actor_text = bounded_text(MAX_ACTOR_CHARS)


def actor(text: str) -> str:
    """An argparse type for ``--by``: who decides, as recorded in the audit log; a person's name, never
    one of the system's own actors (``policy:...``, ``agent:...``, ``system``, ``executor``)."""
    name = _actor_text(text).strip()
    if not name:
        raise argparse.ArgumentTypeError(f"must name who decides, got {text!r}")
    lowered = name.lower()
    if lowered in RESERVED_ACTORS or lowered.startswith(RESERVED_ACTOR_PREFIXES):
        raise argparse.ArgumentTypeError(f"{name!r} is reserved for the system's own actions")
    return name


limit = bounded_int(1, MAX_LIMIT)
comment = bounded_text(MAX_COMMENT_CHARS)


def open_state(settings: Settings) -> StateStore:
    """The configured state store, migrated (the embedded SQLite's home folder made first when it is used)."""
    if not settings.database_url:
        prepare_home(settings)
    store = StateStore(state_store_url(settings.database_url, settings.home))
    store.migrate()
    return store
