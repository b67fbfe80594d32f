"""Errors meant for the user: printed as one line, no traceback, non-zero exit."""


class UserError(Exception):
    """A mistake in input or environment the user can fix; the message is the whole story."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
