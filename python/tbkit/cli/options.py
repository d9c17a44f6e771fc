"""Options shared by several subcommands (not a subcommand itself)."""

from __future__ import annotations

import argparse


def add_config_option(parser: argparse._ActionsContainer) -> None:  # a parser or an argument group
    """``--config FILE``: the model's config for any source form, read instead of any config.json
    (precedence: docs/sources.md, "Configs"); passed to ``tbkit.load`` as ``config=``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="the model's config (JSON), for any source; wins over a config.json beside the model, in its "
        "package folder or in a --path folder",
    )
