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


def reason_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line for a user: its first line, with the next one when the first
    only announces it (ends with ':'), cut at ``limit`` characters; its type when it says
    nothing."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    reason = lines[0]
    if reason.endswith(":") and len(lines) > 1:
        reason = f"{reason} {lines[1]}"
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."
