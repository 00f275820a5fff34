"""Names users give (class folders, run names, file names) stay text wherever the tool puts them.

* Spreadsheets: a CSV cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
  return is a formula to Excel, LibreOffice and Google Sheets (``=HYPERLINK(...)`` runs when the
  table is opened). Such a cell is written with a leading ``'`` (the spreadsheets' own "this is
  text" mark, shown by none of them), numbers excepted (``-0.25`` stays a number). A cell that
  already starts with ``'`` gets one more, so that reading strips exactly what writing added.
* Terminals: escape sequences inside a name (``ESC ] 0 ;`` sets the window title, ``ESC [ 2 J``
  clears the screen, ``ESC ] 52`` writes the clipboard, ``ESC [ 8 m`` hides text) are printed
  as visible ``\\x1b`` text, on the console and in logs and CSV tables (``cat`` shows them).
* Unicode: ``León`` copied from macOS is decomposed (``e`` + a combining accent); every class
  name is compared and stored in one form, NFC (``class_name``).
"""

from __future__ import annotations

import io
import re
import unicodedata

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_TEXT_MARK = "'"


def class_name(name: str) -> str:
    """The one form of a class name (NFC): the same whichever way the folder was written."""
    return unicodedata.normalize("NFC", name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def spreadsheet_cell(value):
    """``value`` as a CSV cell that no spreadsheet runs as a formula and no terminal runs as
    an escape sequence (see the module's notes)."""
    if not isinstance(value, str) or not value:
        return value
    value = plain_text(value)
    if value.startswith(_TEXT_MARK) or (value.startswith(FORMULA_STARTS)
                                        and not _is_number(value)):
        return _TEXT_MARK + value
    return value


def from_spreadsheet_cell(text: str) -> str:
    """The value ``spreadsheet_cell`` wrote (a cell written before it existed reads as is)."""
    if text.startswith(_TEXT_MARK) and text[1:].startswith(FORMULA_STARTS + (_TEXT_MARK,)):
        return text[1:]
    return text


def spreadsheet_row(row: dict) -> dict:
    return {key: spreadsheet_cell(value) for key, value in row.items()}


def from_spreadsheet_row(row: dict) -> dict:
    return {key: from_spreadsheet_cell(value) if isinstance(value, str) else value
            for key, value in row.items()}


# what may reach a terminal: no escape sequence at all (a colour can hide the rest of a line, a
# cursor move overwrite earlier ones); \b \t \n \r pass for progress bars, every other
# control character (C0, DEL, C1) is shown as text. Nothing this tool prints is coloured.
_KEPT_SEQUENCE = re.compile(r"(?!)")  # matches nothing
_CONTROL = re.compile(r"[\x00-\x07\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _visible(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}"


def terminal_text(text: str) -> str:
    """``text`` with every escape sequence but colours and cursor-up made visible."""
    if "\x1b" not in text and not _CONTROL.search(text):
        return text
    pieces, start = [], 0
    for kept in _KEPT_SEQUENCE.finditer(text):
        pieces.append(_CONTROL.sub(_visible, text[start:kept.start()]))
        pieces.append(kept.group())
        start = kept.end()
    pieces.append(_CONTROL.sub(_visible, text[start:]))
    return "".join(pieces)


def plain_text(text: str) -> str:
    """``text`` for a log file: every control character but \\t and \\n shown as text."""
    return _CONTROL.sub(_visible, text.replace("\x1b", "\\x1b"))


class InertStream(io.TextIOBase):
    """A console stream that writes everything through ``terminal_text``.

    A write may end inside an escape sequence (``ESC`` alone, then ``]0;...``): it is held
    back until the next write shows what it starts, so it is never split past the check.
    """

    def __init__(self, console):
        self._raw = console
        self._held = ""

    def write(self, text: str) -> int:
        data = self._held + text
        cut = data.rfind("\x1b")
        self._held = ""
        if cut >= 0 and not _KEPT_SEQUENCE.match(data, cut) and len(data) - cut < 16 \
                and re.fullmatch(r"\x1b(\[[0-9;]*)?", data[cut:]):
            data, self._held = data[:cut], data[cut:]  # an unfinished sequence: wait
        self._raw.write(terminal_text(data))
        return len(text)

    def flush(self) -> None:
        if self._held:
            self._raw.write(terminal_text(self._held))
            self._held = ""
        self._raw.flush()

    def isatty(self) -> bool:
        return self._raw.isatty()

    def fileno(self):
        return self._raw.fileno()

    @property
    def encoding(self):
        return getattr(self._raw, "encoding", "utf-8")

    def __getattr__(self, name):
        return getattr(self._raw, name)
