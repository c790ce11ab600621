"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class CycadaError(Exception):
    """An error caused by the user's input (a name, a file, a config value)."""


class DataError(CycadaError):
    """A data set is unknown, missing, unreadable or inconsistent."""


class ConfigError(CycadaError):
    """A configuration key or value is invalid."""


class CheckpointError(CycadaError):
    """A checkpoint is missing, truncated or does not match the requested network."""


class ExportError(CycadaError):
    """Export failed: a parity bound was missed, or an engine could not be built."""


class ServingError(CycadaError):
    """The Triton server could not start, load a model, or answer."""
