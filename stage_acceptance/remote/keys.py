"""CURVE key folders for the remote protocol (``stage-acceptance keys DIR``).

Layout of a key folder::

    DIR/server.key            server public key    (needed by every client)
    DIR/server.key_secret     server secret key    (only on the microscope PC)
    DIR/client.key            client public key
    DIR/client.key_secret     client secret key    (only on the client machine)
    DIR/authorized/client.key public keys of the clients the server admits

A facility admits another client by copying its ``*.key`` into ``authorized/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zmq.auth


class KeysError(ValueError):
    """A key folder is missing a file or holds an unreadable key. The message is one line."""



def create_keys(directory: str | Path) -> Path:
    """Create server and client CURVE key pairs in `directory` (see the module docstring).

    Raises
    ------
    KeysError
        If `directory` already holds keys (they are never overwritten).
    """
    root = Path(directory)
    existing = [name for name in ("server.key", "server.key_secret", "client.key", "client.key_secret")
                if (root / name).exists()]
    if existing:
        raise KeysError(f"{root}: already holds keys ({', '.join(existing)}); choose an empty folder")
    (root / "authorized").mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(root), "server")
    client_public, _ = zmq.auth.create_certificates(str(root), "client")
    shutil.copy(client_public, root / "authorized" / "client.key")
    return root


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
    """The server's (public, secret) key pair from `directory`."""
    return _load(Path(directory) / "server.key_secret", secret=True)


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
