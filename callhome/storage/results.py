"""
Writing step results to disk, atomically.

Each result lands at ``<results_dir>/<device>/<UTC timestamp>-<action>.xml``.
It is written to a hidden temporary file in the same directory and then
hard-linked to its final name, so a reader never sees a partial file and an
existing result is never overwritten (two results in the same microsecond
get a ``-1``, ``-2`` ... suffix).

Every file written is reported to C{on_saved} with its metadata (device,
action, path, size, SHA-256, session), which the service records in the
store; L{ResultsWriter.for_session} gives a call's actions a writer that
tags their results with the call's id.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; results get the mode any new file would get.
_FILE_MODE = 0o666 & ~_current_umask()


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S.%fZ")


@dataclass(frozen=True)
class SavedFile:
    """The metadata of a result file just written."""

    device: str
    action: str
    path: Path
    size: int
    sha256: str
    session: str | None
    time: float
    #: the payload itself when it goes into the database instead of a file
    #: (``store.payloads: database``): C{path} names it but is no file.
    data: bytes | None = None


class ResultsWriter:
    """
    Writes results under one directory.

    @ivar directory: the results directory; created on first use.
    @ivar now: returns the current UTC time (injectable for tests).
    @ivar on_saved: called with a L{SavedFile} for every file written.
    @ivar session: the call id this writer tags results with (see
        L{for_session}).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        now: Callable[[], datetime] = _utc_now,
        on_saved: Callable[[SavedFile], None] | None = None,
        durable: bool = False,
        inline_max: int = 0,
    ) -> None:
        self.directory = Path(directory)
        #: store.payloads: database: a result up to this size is no file;
        #: it goes to C{on_saved} (the store) with its bytes.  0: files.
        self.inline_max = inline_max
        #: fsync each file before it gets its name, and its folder after.
        self.durable = durable
        self.now = now
        self.on_saved = on_saved
        self.session: str | None = None
        self.saved = 0
        # Device folders known to exist: a mkdir per result costs a syscall
        # (~0.3 ms on some filesystems) for nothing.
        self._folders: set[Path] = set()

    def for_session(self, session: str) -> "ResultsWriter":
        """A writer sharing this one's directory and callback, tagging results with C{session}."""
        bound = copy.copy(self)  # shares the folder cache: cheap, one per call
        bound.session = session
        return bound

    def _report(self, device: str, action: str, path: Path, payload: bytes, when: datetime, inline: bool = False) -> None:
        self.saved += 1
        if self.on_saved is not None:
            self.on_saved(SavedFile(
                device, action, path, len(payload), hashlib.sha256(payload).hexdigest(),
                self.session, when.timestamp(), payload if inline else None,
            ))

    def stamp(self) -> str:
        """The UTC timestamp used in result names, e.g. 20261124T081734.587871Z."""
        return _stamp(self.now())

    def save_file(self, device: str, relative: str, payload: bytes, under_device: bool = True, action: str = "save") -> Path:
        """
        Write C{payload} to a chosen path under the results directory (under
        the device's folder unless C{under_device} is False), replacing any
        file there atomically.

        @raises ValueError: if the path would leave the results directory.
        """
        base = (self.directory / device) if under_device else self.directory
        final = (base / relative).resolve()
        root = base.resolve()
        if root != final and root not in final.parents:
            raise ValueError(f"{relative!r} is outside {'the device folder' if under_device else 'the results directory'}")
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".partial-", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), _FILE_MODE)
                f.write(payload)
                self._sync(f)
            os.replace(temporary, final)
            self._sync_folder(final.parent)
        except BaseException:
            os.unlink(temporary)
            raise
        self._report(device, action, final, payload, self.now())
        return final

    def save(self, device: str, action: str, payload: bytes) -> Path:
        """
        Write one result; return its final path.

        @param device: the device name (validated by the config: no path parts).
        @param action: the action name, used in the file name.
        @return: the file, or with C{inline_max} (store.payloads: database)
            and a payload that small, the name it has in the database.
        """
        folder = self.directory / device
        if len(payload) <= self.inline_max and self.on_saved is not None:
            # No file: the store writes the bytes with the row, in its next
            # batch (bench/payloads.py: ~12 us a result against ~285 us).
            when = self.now()
            final = folder / f"{_stamp(when)}-{action}.xml"
            self._report(device, action, final, payload, when, inline=True)
            return final
        if folder not in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            self._folders.add(folder)
        when = self.now()
        stamp = _stamp(when)
        fd, temporary = tempfile.mkstemp(prefix=".partial-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), _FILE_MODE)
                f.write(payload)
                self._sync(f)
            final = self._link_unique(temporary, folder, f"{stamp}-{action}")
        finally:
            os.unlink(temporary)
        self._sync_folder(folder)
        self._report(device, action, final, payload, when)
        return final

    def _sync(self, f: Any) -> None:
        """store.durable: the bytes are on disk before the file gets its name."""
        if self.durable:
            f.flush()
            os.fsync(f.fileno())

    def _sync_folder(self, folder: Path) -> None:
        """store.durable: the name (link, rename, unlink) is on disk too."""
        if self.durable:
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _link_unique(temporary: str, folder: Path, stem: str) -> Path:
        """Give the temporary file a final name no other result has."""
        for attempt in range(1000):
            name = f"{stem}.xml" if attempt == 0 else f"{stem}-{attempt}.xml"
            final = folder / name
            try:
                os.link(temporary, final)
            except FileExistsError:
                continue
            return final
        raise FileExistsError(f"no free result name for {folder / stem}")
