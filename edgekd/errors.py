"""Errors a user can act on.

An :class:`EdgekdError` is bad input (a recipe field, a missing file, an impossible budget): the CLI prints
its message on one line and exits with code 2, with no traceback unless ``--debug`` is given.
"""

# The exit code of a command interrupted (Ctrl-C), as shells report a process stopped by SIGINT.
EXIT_INTERRUPTED = 130


class EdgekdError(Exception):
    """A problem in what the user gave us, explained in one line."""

    exit_code = 2


class CheckFailed(EdgekdError):
    """The input was fine but a result failed a check the run enforces (e.g. artifact parity): exit code 1.

    A build that fails a check after writing its report sets `results` (its RunMetrics), so the command can
    still show the summary tables the user needs to judge the failure."""

    exit_code = 1
    results = None


class RecipeError(EdgekdError):
    """A recipe field holds a value that is not allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class TrainingDiverged(EdgekdError):
    """A training loss became NaN or infinite: the recipe's values do not train (exit code 2, as bad input)."""
