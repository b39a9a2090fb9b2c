"""The one exception type for user errors.

A :class:`KShotError` means the input was wrong (an unknown method, an impossible episode shape, a
corrupt archive, a checkpoint of another method ...). Its message names the problem and the fix;
the CLI prints it on one line and exits with status 2, without a traceback.
"""


class KShotError(ValueError):
    """Bad input: the message says what was wrong and what to do about it."""
