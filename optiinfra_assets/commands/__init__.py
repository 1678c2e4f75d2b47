"""Subcommands of `optiinfra` that live beside the features they expose.

Every module here defines ``add_parser(subparsers)``; :func:`optiinfra_assets.cli.build_parser` discovers
them, so a new command is one new module. Handlers take ``(args, settings)`` and return an exit code.
"""
