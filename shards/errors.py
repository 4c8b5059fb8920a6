"""The error a user can cause (bad input, missing manifest), and the command lines' error boundary:
the CLI prints it as one line and exits 2 (`python -m trainer` uses the same boundary)."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable


class ShardError(Exception):
    """A user-facing problem: the message names the file and the field; no traceback is shown."""


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
DEBUG_ENV = "POSEFORGE_DEBUG"


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """(--debug given or POSEFORGE_DEBUG set, argv without --debug): the flag may go anywhere."""
    flag = "--debug" in argv
    return flag or os.environ.get(DEBUG_ENV, "") not in ("", "0"), [a for a in argv if a != "--debug"]


def describe_error(error: BaseException) -> str:
    """One line: an OSError names its file (`path: Permission denied`), other errors their message."""
    if isinstance(error, OSError) and error.strerror:
        names = " -> ".join(str(n) for n in (error.filename, error.filename2) if n is not None)
        return f"{names}: {error.strerror}" if names else error.strerror
    return str(error) or type(error).__name__


def run_cli(command: Callable[[], int], user_errors: Callable[[], tuple[type[BaseException], ...]],
            debug: bool) -> int:
    """The one error boundary of a command line: user errors and OS errors (paths, permissions, a
    full disk) become one line and exit 2, Ctrl-C one line and exit 130; --debug shows tracebacks.
    `user_errors` is called only when something was raised (its classes may need torch)."""
    try:
        return command()
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if debug or not isinstance(error, (*user_errors(), OSError)):
            raise
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
