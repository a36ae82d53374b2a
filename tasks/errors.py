"""The one error type for user mistakes: its message is a sentence naming the field and the fix."""


class InputError(ValueError):
    """Bad input from the user (spec, corpus, CSV); the CLI prints it and exits with status 2."""
