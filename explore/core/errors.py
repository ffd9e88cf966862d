"""Errors that are the user's to fix (a bad config value, a missing folder, a broken file).

Entry points catch `UserError`, print its message (which names the bad value and what to do)
and exit with status 1, instead of a traceback.
"""


class UserError(RuntimeError):
    pass


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names it and what to do."""
