"""The one exception type for mistakes a user can fix (bad config key, missing file, corrupt input, ...).

Its message names the file, line or key and says what to do. Entry points catch it, print the message on one line
and exit with code 2; everything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """An error caused by the user's input; the message says what is wrong and how to fix it."""
