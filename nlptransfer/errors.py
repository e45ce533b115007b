"""The errors a user can fix, and how an entry point shows them: one `error: ...` line, exit status 2.

A leaf: it imports nothing of ours, so every module can raise these without an import cycle.
Each class keeps the builtin base it had, so code that caught `ValueError`/`OSError` still does.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

DEBUG_ENV = "NLPTRANSFER_DEBUG"
"""Set to 1 (or pass --debug) to see the full traceback of a user-facing error."""


class NlptransferError(Exception):
    """Base of the errors whose message tells the user what to change; entry points print only the message."""

    exit_status = 2  # like argparse: the command line or its inputs were wrong


class ConfigError(NlptransferError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class DataError(NlptransferError, ValueError):
    """Input data is missing, malformed or inconsistent; the message names the file, line and field."""


class ModelNotFoundError(NlptransferError, OSError):
    """Neither a local folder, an installed package nor the Hub could provide the model."""


class SplitZipError(ModelNotFoundError):
    """The packages of a `SplitZipModel` are installed, but their parts do not join into its zip."""


class OutputDirError(NlptransferError, FileExistsError):
    """The output folder holds a run (or is a file) and the flags do not say to reuse it."""


class CheckpointNotFoundError(NlptransferError, FileNotFoundError):
    """`--resume_from_checkpoint` names no checkpoint."""


class RunFolderError(NlptransferError, FileNotFoundError):
    """A folder is not a run folder of a kind that this operation reads (or lacks one of its files)."""


class PushError(NlptransferError, RuntimeError):
    """The push failed; the local run is untouched and the message says what to re-run."""

    exit_status = 1  # the input was fine; the Hub (or the network) was not


USER_ERRORS: tuple[type[BaseException], ...] = (NlptransferError,)


def debug_requested(argv: list[str] | None = None) -> bool:
    """`--debug` on the command line or NLPTRANSFER_DEBUG=1 in the environment."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def without_debug_flag(argv: list[str] | None) -> list[str] | None:
    """argv without `--debug` (None stays None: the caller then reads sys.argv, where we strip it too)."""
    if argv is None:
        if "--debug" in sys.argv:
            sys.argv = [arg for arg in sys.argv if arg != "--debug"]
        return None
    return [arg for arg in argv if arg != "--debug"]


def report_user_error(err: NlptransferError, debug: bool) -> int:
    """Print a user-facing error as one `error: ...` line on stderr (the traceback first with --debug);
    return the exit status it calls for."""
    if debug:
        traceback.print_exception(err)
    print(f"error: {err}", file=sys.stderr)
    return err.exit_status


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run an entry point's `main(argv)` and exit: 0 on success, 2 with one `error: ...` line on a user error.

    Like argparse, a bad flag, file or folder gets its message on stderr and no traceback (that only
    with --debug or NLPTRANSFER_DEBUG=1). Any other exception is a bug, or the environment's, and keeps
    its traceback. `main` itself raises, so library callers and tests see the exception.
    """
    debug = debug_requested(argv)
    argv = without_debug_flag(argv)
    try:
        status = main(argv)
    except USER_ERRORS as err:
        raise SystemExit(report_user_error(err, debug)) from None
    raise SystemExit(status if isinstance(status, int) else 0)
