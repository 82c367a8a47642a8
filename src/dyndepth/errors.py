"""User-facing errors.

Anything a user can cause (a wrong model name, a malformed checkpoint, a prompt that is too long) raises a
``DyndepthError`` with a one-line message. The command line prints that line and exits with code 2 instead of
showing a traceback; library users can catch the class.
"""


class DyndepthError(Exception):
    """A user mistake or an unusable input, explained in one line."""

    exit_code = 2
