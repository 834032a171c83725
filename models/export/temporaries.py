"""The repository writer's temporary directories: claimed under a lock, and removed once no writer holds them.

The writer (models/repository.py) builds an entry in `.NAME.tmp-XXXXXXXX` and renames it to NAME. A writer
killed with `kill -9` (or by a power cut) leaves that directory behind. So each one is *claimed*:

1. `claim_temporary` first creates the marker `.NAME.tmp-XXXXXXXX.lock` beside it (O_EXCL), takes an
   exclusive `flock` on it and writes who holds it (pid, boot id, process start time: for people reading
   it); only then does it make the directory. A temporary directory therefore never exists without its
   marker, and a marker with content has always been locked by its writer first. The lock lasts as long as
   the open file: until `release_temporary` (after the rename into place, which unlinks the marker before
   closing it) or the writer's death, when the kernel drops it (kill -9 included).
2. `remove_stale` (at the start of every write into a repository, and in `bnfold build-default`) removes a
   directory only if it is bnfold's own — a real directory (not a symlink) named `.NAME.tmp-XXXX` for an
   allowed NAME, beside a regular-file marker whose content bnfold wrote — and only while it holds that
   marker's lock itself: a lock it can take on a marker still linked is one no writer holds (a writer
   unlinks its marker before it lets go). A marker left alone (a writer killed between the rename and the
   unlink) goes the same way. A live writer's directory, a directory without a marker and anything else
   are left alone; so is the empty marker of a writer killed in the microseconds between creating and
   locking it.

`find_stale` reports the same directories without touching them (for `bnfold verify`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

MARKER_SUFFIX = ".lock"
TEMPORARY_NAME = re.compile(r"\.(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})\.tmp-[a-z0-9]{8}")
_held: dict[Path, IO[bytes]] = {}  # this process's claimed directories → their locked marker files


def marker_of(temporary: Path) -> Path:
    return temporary.with_name(temporary.name + MARKER_SUFFIX)


def claim_temporary(repository: Path, name: str) -> Path:
    """A new directory `.NAME.tmp-XXXXXXXX` in `repository`, whose marker this process holds locked."""
    while True:
        temporary = repository / f".{name}.tmp-{secrets.token_hex(4)}"
        try:
            handle = marker_of(temporary).open("xb", buffering=0)
        except FileExistsError:
            continue
        _held[temporary] = handle
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            handle.write(json.dumps(_writer_identity()).encode() + b"\n")
            os.fsync(handle.fileno())
            temporary.mkdir(mode=0o700)
        except BaseException:
            release_temporary(temporary)
            raise
        return temporary


def release_temporary(temporary: Path) -> None:
    """Unlink the marker, then drop its lock (in that order: see remove_stale); safe to call again."""
    handle = _held.pop(temporary, None)
    if handle is not None:
        with contextlib.suppress(FileNotFoundError):
            marker_of(temporary).unlink()
        handle.close()


def remove_stale(repository: Path) -> list[Path]:
    """Remove every stale temporary directory (and stale marker) of bnfold's writer in `repository`; returns
    the temporary directories (or lone markers) removed."""
    removed = []
    for temporary in _candidates(repository):
        with _lock_if_free(marker_of(temporary)) as free:
            if free:
                lone = not temporary.is_dir()
                if not lone:
                    shutil.rmtree(temporary)
                marker_of(temporary).unlink()
                removed.append(marker_of(temporary) if lone else temporary)
    return removed


def find_stale(repository: Path) -> list[Path]:
    """The stale temporary directories `remove_stale` would remove, left in place."""
    found = []
    for temporary in _candidates(repository):
        with _lock_if_free(marker_of(temporary)) as free:
            if free and temporary.is_dir():
                found.append(temporary)
    return found


def _candidates(repository: Path) -> Iterator[Path]:
    """Temporaries named by a regular-file marker whose text is bnfold's, the directory (if there is one) not
    being a symlink."""
    try:
        entries = sorted(os.scandir(repository), key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        temporary = Path(entry.path[: -len(MARKER_SUFFIX)])
        if not entry.name.endswith(MARKER_SUFFIX) or not TEMPORARY_NAME.fullmatch(temporary.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or temporary.is_symlink() or not _written_by_bnfold(entry):
                continue
        except OSError:
            continue
        if not temporary.exists() or temporary.is_dir():
            yield temporary


@contextlib.contextmanager
def _lock_if_free(marker: Path) -> Iterator[bool]:
    """True (holding the marker's lock for the block) when no writer holds it; False when one does."""
    try:
        descriptor = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A writer unlinks its marker before it drops the lock (release_temporary): a lock taken on an
        # unlinked marker belongs to a directory about to be renamed into place, not to a stale one.
        free = os.fstat(descriptor).st_nlink > 0
    except BlockingIOError:
        free = False
    if not free:
        os.close(descriptor)
        yield False
        return
    try:
        yield True
    finally:
        os.close(descriptor)


def _written_by_bnfold(marker: os.DirEntry[str]) -> bool:
    try:
        with open(marker.path, "rb") as handle:
            return json.loads(handle.read(4096)).get("writer") == "bnfold"
    except (ValueError, AttributeError):
        return False


def _writer_identity() -> dict[str, object]:
    """Who holds the directory: for a person reading the marker (the lock, not this text, decides)."""
    boot_id = ""
    with contextlib.suppress(OSError):
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    started = ""
    with contextlib.suppress(OSError, IndexError):
        started = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return {"writer": "bnfold", "pid": os.getpid(), "boot_id": boot_id, "process_start_ticks": started,
            "claimed_at": time.time()}  # fmt: skip
