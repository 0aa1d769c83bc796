"""What a login tells authgate about the password it tried."""

import hashlib


def password_fingerprint(password: str) -> bytes:
    """The 32-byte SHA-256 of `password` (UTF-8), for `password_fingerprint=`.

    Never send the raw password: send this. authgate re-keys it with
    HMAC-SHA256 under a server-side secret and keeps only that HMAC, so it
    can count one password tried against many accounts (password spraying)
    without holding anything a leak could turn back into the password.
    """
    return hashlib.sha256(password.encode("utf-8")).digest()
