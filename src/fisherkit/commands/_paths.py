"""Output paths of the commands, checked before any computation (a long run must not end in a crash).

The rule for every command: an output *file* (``--json``, ``--plot``) must not be an existing folder or
a read-only file; an output *folder* (``--out``) must not be an existing file; missing folders are
created when the results are written, so the nearest existing ancestor must be a writable folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FisherkitError


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(path, option: str, folder: bool = False) -> Path | None:
    """Raise ``FisherkitError`` now if ``path`` (the value of ``option``) cannot be written later."""
    if path is None:
        return None
    path = Path(path)
    suffix = " (checked before computing anything)"
    if folder and path.exists() and not path.is_dir():
        raise FisherkitError(f"{option} {path} is a file; {option} takes a folder (created if missing){suffix}")
    if not folder:
        if path.is_dir():
            raise FisherkitError(f"{option} {path} is a folder; give a file path such as {path / 'out'}{suffix}")
        if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
            raise FisherkitError(f"{option} {path} is a read-only file; make it writable or choose another path{suffix}")
    anchor = _nearest_existing(path if folder else path.parent)
    if not anchor.is_dir():
        raise FisherkitError(f"{option} {path}: {anchor} is a file, not a folder{suffix}")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise FisherkitError(f"{option} {path}: the folder {anchor} is not writable{suffix}")
    return path


def make_parent(path: Path) -> Path:
    """Create the folder a checked output file goes into."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return Path(path)
