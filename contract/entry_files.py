"""Which files an entry may use, and opening them without following links or blocking.

An entry may only use regular files inside its own directory: a file named in model.json must be a plain
file name (no path separator, not '.' or '..', not absolute), and the path must be a regular file itself —
not a symbolic link (wherever it points), a FIFO, a socket or a device. Files are opened with O_NOFOLLOW and
O_NONBLOCK and checked again with fstat on the open descriptor, so a file swapped for a FIFO or a link
between the check and the open is still refused and never blocks the reader.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from bnfold.contract.errors import ContractError

_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def entry_file(directory: Path, name: str, role: str) -> Path:
    """The path of the file `name` that model.json names as `role`, once it is known to be a plain name."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        raise ContractError(
            f"model.json names {role} file {name!r}: an entry may only use regular files inside its own "
            "directory, named without a path; rebuild the entry"
        )
    return directory / name


def check_regular(path: Path, role: str) -> None:
    """ContractError unless `path` exists and is a regular file, not a link (lstat: links are not followed)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise ContractError(f"{role} file {path.name} is missing; rebuild the entry") from None
    except OSError as error:
        raise ContractError(f"{role} file {path.name} cannot be read ({error.strerror}); rebuild the entry") from None
    _require_regular(mode, path, role)


def open_regular(path: Path, role: str) -> BinaryIO:
    """`path` opened for reading in binary, refused unless it is a regular file (checked on the descriptor)."""
    check_regular(path, role)
    try:
        descriptor = os.open(path, _FLAGS)
    except OSError as error:  # ELOOP: replaced by a link after the check
        raise ContractError(f"{role} file {path.name} cannot be opened ({error.strerror}); rebuild the entry") from None
    try:
        _require_regular(os.fstat(descriptor).st_mode, path, role)
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def read_regular(path: Path, role: str) -> bytes:
    """The whole content of the regular file `path` (see `open_regular`)."""
    with open_regular(path, role) as stream:
        return stream.read()


def _require_regular(mode: int, path: Path, role: str) -> None:
    if stat.S_ISREG(mode):
        return
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    raise ContractError(
        f"{role} file {path.name} is {kind}: an entry may only use regular files inside its own directory; "
        "replace it with the file itself"
    )


_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}
