"""Errors that several parts raise and the command line reports as one line (exit 2).

Part-specific user errors (ConfigError, MetricInputError, ImageInputError, DistributedError) live
with their part; this module holds the ones shared across layers, so that a lower part (backends)
and a higher one (tracking) can name the same error without importing each other.
"""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, incompatible or unsafe; the message names the path."""


class MetricInputError(ValueError):
    """A user-caused problem with predictions or ground truth; the message says where."""


class RunDirError(RuntimeError):
    """A run directory that belongs to another config or another job; the message says which."""


class OutputError(RuntimeError):
    """An output path that exists (without --overwrite), lies inside a checkpoint, or cannot be written."""
