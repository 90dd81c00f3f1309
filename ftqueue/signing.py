"""Signed payloads: with a secret configured, every pickled blob (function, arguments,
result, error) carries an HMAC-SHA256 over its kind, its owner's id and its bytes, and is
verified before it is unpickled. A blob copied to another task, or changed by one byte, or
written by someone without the secret, is refused (PayloadVerificationError) and never
unpickled.

Settings: FTQUEUE_SECRET or FTQUEUE_SECRET_FILE (the current key, used to sign and verify),
FTQUEUE_OLD_SECRETS / FTQUEUE_OLD_SECRETS_FILE (comma- or line-separated keys still accepted
for verification, for rotation).
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from .exceptions import FtqueueError, PayloadVerificationError
from .settings import secrets_from_env

MAGIC = b"FTQS1"
MAC_SIZE = 32


def _read_file(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise FtqueueError(f"cannot read secret file {path}: {e.strerror}") from None


class Signer:
    def __init__(self, secret: bytes | None, old: tuple[bytes, ...] = ()) -> None:
        self.secret = secret
        self.keys = ((secret,) if secret else ()) + old

    @property
    def enabled(self) -> bool:
        return self.secret is not None

    def _mac(self, key: bytes, kind: str, owner: str, data: bytes) -> bytes:
        mac = hmac.new(key, digestmod=hashlib.sha256)
        mac.update(kind.encode() + b"\0" + owner.encode() + b"\0")
        mac.update(data)
        return mac.digest()

    def seal(self, kind: str, owner: str, data: bytes) -> bytes:
        if self.secret is None:
            return data
        return MAGIC + self._mac(self.secret, kind, owner, data) + data

    def open(self, kind: str, owner: str, blob: bytes) -> bytes:
        """The payload inside `blob`, verified; raises PayloadVerificationError."""
        signed = blob[:len(MAGIC)] == MAGIC
        if not self.enabled:
            if signed:
                raise PayloadVerificationError(
                    f"the {kind} of {owner} is signed, but no FTQUEUE_SECRET is configured here")
            return blob
        if not signed:
            raise PayloadVerificationError(
                f"the {kind} of {owner} is not signed (written without the secret?); refused")
        mac, data = blob[len(MAGIC):len(MAGIC) + MAC_SIZE], blob[len(MAGIC) + MAC_SIZE:]
        for key in self.keys:
            if hmac.compare_digest(mac, self._mac(key, kind, owner, data)):
                return data
        raise PayloadVerificationError(
            f"the {kind} of {owner} failed signature verification (tampered, copied from "
            "another task, or signed with an unknown key); refused without unpickling")


def _split(text: str) -> tuple[bytes, ...]:
    return tuple(k.strip().encode() for k in text.replace("\n", ",").split(",") if k.strip())


@lru_cache(maxsize=1)
def _signer_for(secret: str | None, secret_file: str | None, old: str | None,
                old_file: str | None) -> Signer:
    key = secret or (_read_file(secret_file).strip() if secret_file else None)
    olds = _split(old or "") + (_split(_read_file(old_file)) if old_file else ())
    return Signer(key.encode() if key else None, olds)


def signer() -> Signer:
    """The signer for this process's settings (re-read when they change)."""
    return _signer_for(*secrets_from_env())
