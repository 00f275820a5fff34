"""Errors that reach the user as one line and an exit code, never as a traceback."""


class UserError(Exception):
    """Bad input or environment the user can fix; printed as one line, exit code 2."""

    exit_code = 2


class TrainingStopped(Exception):
    """Training ended before its plan (NaN loss); outputs written so far are kept."""

    exit_code = 1


class RunFailed(Exception):
    """Training failed while running (out of memory, a full disk...); what was saved is kept
    and the run is recorded as failed. Exit code 1."""

    exit_code = 1


class ExportCheckFailed(Exception):
    """An exported file did not match its source model; it was deleted. Exit code 1."""

    exit_code = 1
