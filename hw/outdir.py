"""The one set of rules for every command that writes a directory (`--out`).

- an empty `--out`, an existing file, or a directory whose parent cannot be written is refused;
- an `--out` that is one of the command's inputs, lies inside one, or contains one is refused
  (writing it would destroy the input);
- a non-empty directory is replaced only when the same command made it (a `.tandem-out`
  marker names the command) or when `force` is given;
- everything is written into a temporary sibling (`.NAME.tmp-*`), which replaces `--out` in
  one rename at the end; on any failure the sibling is removed, so nothing is half-written.

It lives in `hw/` (which imports nothing of ours) so that `python -m hw.vitis`, `rtl.build`
and the `tandem` commands share it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["MARKER", "OutputDirError", "check_output_dir", "output_dir"]

#: file inside a directory a command wrote: {"command": NAME}
MARKER = ".tandem-out"


class OutputDirError(ValueError):
    """An output directory that must not or cannot be written."""


def _made_by(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def _inside(a: Path, b: Path) -> bool:
    """True when `a` is `b` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def check_output_dir(out: str | os.PathLike, command: str, inputs: Iterable = (),
                     force: bool = False, flag: str = "--out") -> Path:
    """Raise OutputDirError unless `command` may write `out` under the rules above; returns
    `out` as a Path. Nothing is created."""
    if str(out).strip() == "":
        raise OutputDirError(f"{flag} must name a directory, not an empty string")
    path = Path(out)
    where = path.resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = Path(given).resolve()
        if _inside(where, source):
            raise OutputDirError(f"{flag} {out} is the input {given} or lies inside it; "
                                 "writing it would destroy the input, pick another directory")
        if _inside(source, where):
            raise OutputDirError(f"{flag} {out} contains the input {given}; replacing it would "
                                 "destroy the input, pick another directory")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise OutputDirError(f"{flag} {out} is an existing file, not a directory")
        if any(path.iterdir()) and not force and _made_by(path) != command:
            raise OutputDirError(f"{flag} {out} is a non-empty directory that `{command}` did "
                                 "not write; pass --force to replace it, or pick another "
                                 "directory")
    for parent in where.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputDirError(f"{flag} {out} cannot be created: {parent} is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputDirError(f"{flag} {out} cannot be created: {parent} is not writable")
            break
    return path


@contextmanager
def output_dir(out: str | os.PathLike, command: str, inputs: Iterable = (), force: bool = False,
               keep_existing: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Check `out` (see `check_output_dir`) and yield an empty temporary sibling to write into;
    when the block ends without an exception the sibling, marked as written by `command`,
    replaces `out`. On an exception it is removed and `out` is left as it was.

    keep_existing: start the sibling as a copy of `out`'s files (a run to resume, a build
    cache), so that they survive the replacement."""
    path = check_output_dir(out, command, inputs, force, flag)
    final = path.resolve()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as e:
        raise OutputDirError(f"{flag} {out} cannot be created ({e.strerror or e})") from None
    try:
        if keep_existing and final.is_dir():
            shutil.copytree(final, tmp, dirs_exist_ok=True, symlinks=True)
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"command": command}) + "\n")
        os.chmod(tmp, 0o755 & ~_umask())  # mkdtemp makes it 0700; a directory made normally
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "d")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
