"""The Basic-auth password the backend set with ChangeConfiguration AuthorizationKey: a secret on disk.

Kept in the state directory, next to the database but not in it, readable by the
gateway's user alone (0600), written atomically so that a power cut leaves either
the old key or the new one. The key before the last change is kept too: if the
backend refuses the new key at the reconnect, the uplink goes back to the old one
(or to the installer's password) rather than lock the site out until a technician
drives there.

Never logged: only "set" or "not set" ever leaves this module.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

FILE_NAME = "authorization-key"


class AuthKeyStore:
    """The current and previous AuthorizationKey (kept as hex text, as the backend sends it)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self.previous_path = state_dir / (FILE_NAME + ".previous")

    def __repr__(self) -> str:
        return f"AuthKeyStore({self.path}, {'set' if self.current() else 'not set'})"

    def current(self) -> bytes | None:
        return _read_key(self.path)

    def previous(self) -> bytes | None:
        return _read_key(self.previous_path)

    def replace(self, key: bytes) -> None:
        """The new key becomes current; the one it replaces is kept as previous. Raises OSError."""
        old = self.path.read_text() if self.path.exists() else None
        if old is not None:
            _write_secret(self.previous_path, old)
        _write_secret(self.path, key.hex().upper())

    def go_back(self) -> None:
        """The backend refused the current key but took the one before: that one is current again
        (the previous key, or with none the installer's password_file)."""
        if self.previous_path.exists():
            os.replace(self.previous_path, self.path)
        else:
            self.path.unlink(missing_ok=True)
        _sync_dir(self.path.parent)


def _read_key(path: Path) -> bytes | None:
    try:
        return bytes.fromhex(path.read_text().strip()) or None
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # damaged: the installer's password_file applies again


def _write_secret(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the start, never readable by others
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
