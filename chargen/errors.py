"""The one error type for a user's mistake: the CLI prints it as a single line, no traceback."""


class ChargenError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""
