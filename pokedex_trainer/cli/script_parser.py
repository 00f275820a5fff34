"""The scripts' argument parser: a mistake is one line with the nearest valid spelling.

argparse prints the whole usage (45 lines for the trainer) before the one line that matters.
Here a mistyped option or value raises UserError (one line, exit code 2) that says what was
meant: ``--learning-rate`` -> ``--learning_rate``, ``EfficientNet`` -> ``efficientnet``,
``--image_size 224`` -> two numbers.
"""

from __future__ import annotations

import argparse
import difflib
import re

from pokedex_trainer.errors import UserError

PREFIX_NOTE = ("Options may be shortened to any prefix that names one option (--epoch means "
               "--epochs).")


class ScriptParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are one line (UserError) with a hint."""

    def error(self, message: str):
        raise UserError(f"{message}{self._hint(message)} (python {self.prog} --help lists "
                        "every option)")

    def _option_names(self) -> list[str]:
        return [name for action in self._actions for name in action.option_strings
                if name.startswith("--")]

    def _hint(self, message: str) -> str:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            hints = [self._nearest_option(word) for word in unknown.group(1).split()
                     if word.startswith("-")]
            hints = [hint for hint in hints if hint]
            return f"; did you mean {', '.join(hints)}?" if hints else ""
        choice = re.match(r"argument (\S+): invalid choice: '(.*)' \(choose from (.*)\)$",
                          message)
        if choice:
            offered = re.findall(r"'([^']*)'|(\S+?)(?:,|$)", choice.group(3))
            offered = [a or b for a, b in offered if a or b]
            nearest = _nearest(choice.group(2), offered)
            return f"; did you mean {choice.group(1)} {nearest}?" if nearest else ""
        counted = re.match(r"argument (\S+): expected (\d+) arguments?", message)
        if counted:
            action = next((a for a in self._actions if counted.group(1).split("/")[0]
                           in a.option_strings), None)
            if action is not None and action.metavar and isinstance(action.metavar, tuple):
                return f": {counted.group(1)} {' '.join(action.metavar)}"
        return ""

    def _nearest_option(self, word: str) -> str | None:
        flag = word.split("=", 1)[0]
        names = self._option_names()
        spelled = "--" + flag.lstrip("-").replace("-", "_").lower()
        if spelled in names:
            return spelled
        return _nearest(spelled, names)


def _nearest(word: str, candidates: list[str]) -> str | None:
    """The candidate ``word`` most likely means: same letters in another case first."""
    by_case = [c for c in candidates if c.lower() == word.lower()]
    if by_case:
        return by_case[0]
    close = difflib.get_close_matches(word.lower(), candidates, n=1, cutoff=0.6)
    return close[0] if close else None
