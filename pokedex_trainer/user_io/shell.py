"""Command lines the tool prints for the user to paste into bash or PowerShell."""

from __future__ import annotations

import logging
import shlex

logger = logging.getLogger(__name__)

SPECIAL = set(" \t\"'$`;&|<>(){}#,@!*?[]~\\%")


def quote_token(token: str) -> str:
    """One argument as bash and PowerShell both read it: bare when plain, else in single
    quotes (literal in both shells). A token holding a single quote cannot be written alike
    in both: it is quoted for bash (and logged)."""
    if token and not any(c in SPECIAL for c in token):
        return token
    if "'" not in token:
        return f"'{token}'"
    logger.warning("a suggested command holds a value with a single quote (%s): it is "
                   "written for bash; in PowerShell double that quote instead", token)
    return shlex.quote(token)
