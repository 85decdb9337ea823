"""The error of bad input: the command line prints a UserError as one paragraph and exits with code 2.

Any other exception is a bug and keeps its traceback, a plain ValueError included: raise UserError (never a bare
ValueError) for whatever the user can fix (a file, a row, a flag, a folder), with a message that names it and the fix.
"""


class UserError(ValueError):
    """Bad input the user can fix; a ValueError, so `except ValueError` and `pytest.raises(ValueError)` still see it."""
