"""Errors a user can act on. The CLI prints them as one line (no traceback) and exits with status 2."""


class InputError(ValueError):
    """Bad user input (a scene file, a config key, a camera file). The message names the file and the problem."""


class ConfigError(InputError):
    """A config key that does not exist, or a value of the wrong type. The message names the key."""


class MissingWeightsError(RuntimeError):
    """A pretrained prior's weights are not available locally. The message says how to provide them."""
