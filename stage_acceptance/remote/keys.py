"""CURVE key folders for the remote protocol (``stage-acceptance keys DIR``).

Layout of a key folder::

    DIR/server.key            server public key    (needed by every client)
    DIR/server.key_secret     server secret key    (only on the microscope PC)
    DIR/client.key            client public key
    DIR/client.key_secret     client secret key    (only on the client machine)
    DIR/authorized/client.key public keys of the clients the server admits

A facility admits another client by copying its ``*.key`` into ``authorized/``.

The folder and ``authorized/`` are private to their owner (mode 0700) and the secret
key files are 0600. A server refuses to start on a secret key that group or others may
read.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import zmq.auth

SECRET_FILES = ("server.key_secret", "client.key_secret")
"""The secret key files of a key folder."""


class KeysError(ValueError):
    """A key folder is missing a file, holds an unreadable key, or exposes a secret key. The message is one line."""


def create_keys(directory: str | Path) -> Path:
    """Create server and client CURVE key pairs in `directory` (see the module docstring).

    `directory` is created (or must be empty) and made private (0700) before any key is
    written; the secret key files are 0600.

    Raises
    ------
    KeysError
        If `directory` already holds keys (they are never overwritten) or other files.
    """
    root = Path(directory)
    existing = [name for name in ("server.key", "server.key_secret", "client.key", "client.key_secret")
                if (root / name).exists()]
    if existing:
        raise KeysError(f"{root}: already holds keys ({', '.join(existing)}); choose an empty folder")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise KeysError(f"{root}: is not an empty folder (it is made private, mode 0700); choose a new or empty "
                        f"folder")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root.chmod(0o700)  # also when it existed, empty; mkdir's mode is subject to the umask
    (root / "authorized").mkdir(mode=0o700, exist_ok=True)
    (root / "authorized").chmod(0o700)
    zmq.auth.create_certificates(str(root), "server")
    client_public, _ = zmq.auth.create_certificates(str(root), "client")
    for name in SECRET_FILES:
        (root / name).chmod(0o600)
    shutil.copy(client_public, root / "authorized" / "client.key")
    return root


def check_private(path: Path) -> None:
    """Refuse a secret key file that group or others may read or write (POSIX only).

    Raises
    ------
    KeysError
        Naming the file, its mode and the fix.
    """
    if os.name != "posix":
        return  # Windows: permissions are ACLs, not mode bits
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeysError(f"{path}: secret key is open to group or others (mode {mode:04o}); make it private "
                        f"(chmod 600 {path}; chmod 700 {path.parent})")


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise KeysError(f"{path}: key file not found (create keys with 'stage-acceptance keys DIR')")
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise KeysError(f"{path}: not a CURVE key file: {exc}") from None
    if secret and not secret_key:
        raise KeysError(f"{path}: holds no secret key")
    return public, secret_key


def server_secret(directory: str | Path) -> tuple[bytes, bytes]:
    """The server's (public, secret) key pair from `directory`.

    Raises
    ------
    KeysError
        For a missing or unreadable key, or a secret key file others may read
        (:func:`check_private`).
    """
    path = Path(directory) / "server.key_secret"
    keys = _load(path, secret=True)
    check_private(path)
    return keys


def authorized_dir(directory: str | Path) -> Path:
    """The folder of admitted client public keys; it must hold at least one ``*.key``."""
    folder = Path(directory) / "authorized"
    if not folder.is_dir() or not list(folder.glob("*.key")):
        raise KeysError(f"{folder}: no client public keys (*.key); the server would admit nobody")
    return folder


def client_keys(directory: str | Path) -> tuple[bytes, bytes, bytes]:
    """``(client_public, client_secret, server_public)`` for a client from `directory`."""
    root = Path(directory)
    public, secret = _load(root / "client.key_secret", secret=True)
    server_public, _ = _load(root / "server.key", secret=False)
    return public, secret, server_public
