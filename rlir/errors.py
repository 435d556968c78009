"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class RlirError(Exception):
    """A problem with the user's input (file, shape, config value) rather than a bug."""


class DataError(RlirError):
    """A missing, damaged or malformed dataset or episode file."""


class ConfigError(RlirError):
    """A bad configuration file or override."""
