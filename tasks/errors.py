"""The error type for bad input to the tasks (corpus, grid, CSV): a UserError of one sentence."""

from storage.errors import UserError


class InputError(UserError):
    """Bad input from the user (spec, corpus, CSV); the CLI prints it and exits with status 2."""
