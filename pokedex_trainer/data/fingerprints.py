"""Which photos of a run changed since it started: what ``--resume`` warns about.

A run resumed on a folder whose photos were edited, re-exported or replaced under the same
names would go on training on other pictures than it started with, silently. Each photo of the
split is fingerprinted when the run starts (its size and a hash of its first and last 16 KB:
any re-encoding, crop or replacement changes them, and reading it costs a fraction of the
first epoch's decoding); ``--resume`` compares.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

EDGE = 16 * 1024


def fingerprint(path: Path) -> str:
    """``<size>:<hash>`` of a file's size and its first and last ``EDGE`` bytes."""
    with open(path, "rb") as handle:
        head = handle.read(EDGE)
        size = handle.seek(0, 2)
        handle.seek(max(size - EDGE, len(head)))
        tail = handle.read(EDGE)
    return f"{size}:{hashlib.blake2b(head + tail, digest_size=8).hexdigest()}"


def fingerprints(root: Path, relatives: list[str]) -> dict[str, str]:
    """Each photo's fingerprint (an unreadable one gets none: the loader reports it)."""
    found = {}
    for relative in relatives:
        try:
            found[relative] = fingerprint(Path(root) / relative)
        except OSError:
            continue
    return found


def changed_photos(root: Path, recorded: dict[str, str]) -> list[str]:
    """The photos whose fingerprint differs from the recorded one, in order."""
    changed = []
    for relative, print_ in recorded.items():
        try:
            now = fingerprint(Path(root) / relative)
        except OSError:
            continue  # a missing photo is refused elsewhere
        if now != print_:
            changed.append(relative)
    return changed
