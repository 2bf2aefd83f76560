"""Errors that reach the user as one clear line and exit code 2 (no traceback), and the
Ctrl-C of a run (:class:`RunInterrupted`, exit code 130)."""

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


class OutputError(MpcsError, OSError):
    """An output folder or file cannot be created or written (not a folder, read-only, disk
    full, in use by another process, or holding a run that is not to be replaced).

    Also an :class:`OSError`, so code that handles a failed write handles this one too; its
    ``strerror`` is the system's reason (e.g. "No space left on device"), ``str()`` the one
    line for the user.
    """


def output_error(message: str, reason: str | None = None) -> OutputError:
    """An :class:`OutputError` saying ``message``, with ``reason`` as its ``strerror``."""
    err = OutputError(message)
    err.strerror = reason  # no errno: str() stays ``message``
    return err


class NonFiniteLossError(MpcsError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; ``str()`` says where the run stands and how to go on (the
    command line prints it after "interrupted")."""
