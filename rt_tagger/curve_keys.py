"""ZeroMQ CURVE key files for publishing beyond loopback.

CURVE encrypts the stream and lets a subscriber check it talks to the right publisher (it must know
the publisher's public key). With an ``authorized_clients`` folder the publisher also checks each
subscriber's public key (ZAP authentication); without it, anyone holding the server's public key may
subscribe.

Files are the ZeroMQ certificate format (``zmq.auth.create_certificates``)::

    KEYDIR/server.key             public: give it to subscribers (--curve-public)
    KEYDIR/server.key_secret      secret: the publisher's (--curve-secret), mode 0600
    KEYDIR/client.key_secret      secret: a subscriber's own keys (--curve-client-dir), mode 0600
    KEYDIR/authorized_clients/    public keys the publisher accepts (client.key is put there)

``python -m rt_tagger.curve_keys KEYDIR`` (or :func:`keygen_main`) writes them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from engines.errors import UserError, UserErrorParser, run_guarded

__all__ = ["CurveError", "CurveKeys", "generate_keys", "keygen_main", "load_public", "load_secret"]

_NAMES = ("server.key", "server.key_secret", "client.key", "client.key_secret")


class CurveError(UserError):
    """Missing, unreadable or wrong-kind CURVE key file."""


@dataclass(frozen=True)
class CurveKeys:
    server_public: Path
    server_secret: Path
    client_public: Path
    client_secret: Path
    authorized_clients: Path


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise CurveError("this libzmq was built without CURVE support")


def generate_keys(key_dir: Path | str, *, overwrite: bool = False) -> CurveKeys:
    """Create a server and a client key pair in ``key_dir`` (secrets mode 0600).

    Keys are written in a private temporary folder first and then moved in, so a secret is
    never readable by others and no half-written set is left behind.

    Raises:
        CurveError: keys already exist (unless ``overwrite``) or the folder cannot be written.
    """
    _require_curve()
    key_dir = Path(key_dir)
    existing = [n for n in _NAMES if (key_dir / n).exists()]
    if existing and not overwrite:
        raise CurveError(
            f"CURVE keys already exist in {key_dir} ({existing[0]}); pass --force to replace them"
        )
    try:
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        auth_dir = key_dir / "authorized_clients"
        auth_dir.mkdir(exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(dir=key_dir, prefix=".keys-"))  # mode 0700
        try:
            for name in ("server", "client"):
                _, secret = zmq.auth.create_certificates(tmp, name)
                os.chmod(secret, 0o600)
            shutil.copy2(tmp / "client.key", tmp / "authorized.key")
            os.replace(tmp / "authorized.key", auth_dir / "client.key")
            for n in _NAMES:
                os.replace(tmp / n, key_dir / n)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:
        raise CurveError(f"cannot write CURVE keys to {key_dir}: {e.strerror or e}") from e
    return CurveKeys(
        server_public=key_dir / "server.key",
        server_secret=key_dir / "server.key_secret",
        client_public=key_dir / "client.key",
        client_secret=key_dir / "client.key_secret",
        authorized_clients=auth_dir,
    )


def _load(path: Path | str) -> tuple[bytes, bytes | None]:
    _require_curve()
    path = Path(path)
    if not path.is_file():
        raise CurveError(f"CURVE key file not found: {path}")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise CurveError(f"not a ZeroMQ CURVE key file: {path} ({e})") from e


def load_public(path: Path | str) -> bytes:
    """Public key (Z85) from a ``.key`` or ``.key_secret`` file."""
    return _load(path)[0]


def load_secret(path: Path | str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` file; a folder means its ``client.key_secret``."""
    path = Path(path)
    if path.is_dir():
        path = path / "client.key_secret"
    public, secret = _load(path)
    if not secret:
        raise CurveError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def keygen_main(argv: list[str] | None = None) -> int:
    """CLI: ``KEYDIR [--force]``; prints where the files went and how to use them."""
    p = UserErrorParser(prog="rt-tagger curve-keys", description="Create CURVE key files.")
    p.add_argument("key_dir", type=Path)
    p.add_argument("--force", action="store_true", help="replace existing keys")
    a = p.parse_args(argv)
    k = generate_keys(a.key_dir, overwrite=a.force)
    print(f"publisher secret:  {k.server_secret}  (--curve-secret; keep private)")
    print(f"publisher public:  {k.server_public}  (give to subscribers: --curve-public)")
    print(f"subscriber secret: {k.client_secret}  (--curve-client-dir)")
    print(f"accepted clients:  {k.authorized_clients}/  (--curve-clients; add more *.key files here)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(run_guarded(keygen_main, sys.argv[1:], "--debug" in sys.argv))
