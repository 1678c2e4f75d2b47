"""Subcommands of `optiinfra` that live beside the features they expose.

Every module here defines ``add_parser(subparsers)``; :func:`optiinfra_assets.cli.build_parser` discovers
them, so a new command is one new module. Handlers take ``(args, settings)`` and return an exit code.
"""

import argparse


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1, or a message saying why not."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value
