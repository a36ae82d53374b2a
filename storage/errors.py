"""The root of the user-error hierarchy, in the bottom layer so that every layer can raise it.

A UserError is the user's mistake (a spec, a corpus, a CSV, a store location); its message is one
sentence naming what is wrong and the fix, and the CLI prints it and exits with status 2. Data that
cannot identify a law form is not a UserError (a sweep records the form as not fitted, with the
reason), and anything else is a bug and surfaces with its traceback.
"""


class UserError(ValueError):
    """A user's mistake; the message is one sentence naming the field and the fix."""
