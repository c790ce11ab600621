"""The errors the ``cycada`` command prints as one line.

Two kinds, two exit codes, so scripts and supervisors can tell them apart:

* :class:`InputError` (exit 2): the user's input is wrong (a name, a file, a config value, a
  request the server refused). Running the same command again cannot help.
* :class:`FailureError` (exit 1): the input was fine and something failed: the server could not
  start or stopped answering, an export missed its parity bound, a disk filled up.
"""


class CycadaError(Exception):
    """Base of the errors printed as one line; ``exit_code`` is what the command returns."""

    exit_code = 1


class InputError(CycadaError):
    """An error caused by the user's input."""

    exit_code = 2


class FailureError(CycadaError):
    """A failure of the machine or a service, not of the input."""

    exit_code = 1


class DataError(InputError):
    """A data set is unknown, missing, unreadable or inconsistent."""


class ConfigError(InputError):
    """A configuration key or value is invalid."""


class CheckpointError(InputError):
    """A checkpoint is missing, truncated or does not match the requested network."""


class OutputError(FailureError):
    """An output could not be written: a full disk, a file size limit, a failing encoder."""


class ExportError(FailureError):
    """Export failed: a parity bound was missed, an engine could not be built, a write failed."""


class ServingError(FailureError):
    """The Triton server could not start, load a model, or answer."""
