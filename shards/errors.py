"""The error a user can cause (bad input, missing manifest): the CLI prints it and exits 2."""


class ShardError(Exception):
    """A user-facing problem: the message names the file and the field; no traceback is shown."""
