"""What several command modules share (light: imported only with them)."""

from __future__ import annotations

import argparse

from mpcs.core.errors import ConfigError
from mpcs.data.download.fetch import FetchSettings

__all__ = ["fetch_settings"]


def fetch_settings(args: argparse.Namespace) -> FetchSettings:
    """``--retries`` and ``--timeout`` as :class:`mpcs.data.download.FetchSettings`."""
    if args.retries < 0 or not 0 < args.timeout < float("inf"):
        raise ConfigError(f"--retries must be >= 0 and --timeout a number of seconds > 0, got "
                          f"{args.retries} and {args.timeout}")
    return FetchSettings(retries=args.retries, timeout=args.timeout)
