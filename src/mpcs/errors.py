"""Errors that reach the user as one clear line and exit code 2 (no traceback)."""

from __future__ import annotations


class MpcsError(Exception):
    """Base class for errors caused by the user's input (data, config, paths).

    The command-line interface prints ``str(error)`` and exits with :attr:`exit_code`.
    """

    exit_code = 2


class DataError(MpcsError):
    """A dataset folder or image is unusable; the message names the file and the problem."""


class ConfigError(MpcsError):
    """A configuration key, type or value is invalid; raised before any work starts."""


class CheckpointError(MpcsError):
    """A checkpoint is missing, unreadable, or does not match the run that loads it."""


class DownloadError(MpcsError):
    """A data set could not be fetched or its archive was refused (unreachable URL, HTTP
    error, checksum mismatch, unsafe archive member); the message names the URL or file."""
