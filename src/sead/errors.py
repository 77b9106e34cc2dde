"""Project exceptions: each message names the problem and the fix, and the CLI prints it in one line."""


class SeadError(Exception):
    """A user-facing error (bad config, bad input, bad state). The CLI prints it and exits 2."""


class ConfigError(SeadError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


class DataError(SeadError):
    """A data file or row cannot be used."""


class CheckpointError(SeadError):
    """A checkpoint is missing, corrupt or does not match the run."""
