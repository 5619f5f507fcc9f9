"""SHA-512 crypt ("$6$") in pure Python, for the guest's /etc/shadow.

The stdlib ``crypt`` module is deprecated (and gone in 3.13), so the fake
computes the hash itself, following Ulrich Drepper's published algorithm.
"""

from __future__ import annotations

import hashlib
import secrets

_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

_PERM = (
    (0, 21, 42),
    (22, 43, 1),
    (44, 2, 23),
    (3, 24, 45),
    (25, 46, 4),
    (47, 5, 26),
    (6, 27, 48),
    (28, 49, 7),
    (50, 8, 29),
    (9, 30, 51),
    (31, 52, 10),
    (53, 11, 32),
    (12, 33, 54),
    (34, 55, 13),
    (56, 14, 35),
    (15, 36, 57),
    (37, 58, 16),
    (59, 17, 38),
    (18, 39, 60),
    (40, 61, 19),
    (62, 20, 41),
)


def _b64(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(_ALPHABET[w & 0x3F])
        w >>= 6
    return "".join(out)


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def sha512_crypt(password: str, salt: str | None = None, rounds: int = 5000) -> str:
    if salt is None:
        salt = "".join(secrets.choice(_ALPHABET) for _ in range(16))
    pw = password.encode()
    s = salt.encode()[:16]
    b = hashlib.sha512(pw + s + pw).digest()
    a = hashlib.sha512(pw + s)
    n = len(pw)
    while n > 64:
        a.update(b)
        n -= 64
    a.update(b[:n])
    n = len(pw)
    while n > 0:
        a.update(b if n & 1 else pw)
        n >>= 1
    da = a.digest()
    p = _repeat(hashlib.sha512(pw * len(pw)).digest(), len(pw)) if pw else b""
    ss = _repeat(hashlib.sha512(s * (16 + da[0])).digest(), len(s)) if s else b""
    c = da
    for i in range(rounds):
        h = hashlib.sha512()
        h.update(p if i & 1 else c)
        if i % 3:
            h.update(ss)
        if i % 7:
            h.update(p)
        h.update(c if i & 1 else p)
        c = h.digest()
    enc = "".join(_b64(c[x], c[y], c[z], 4) for x, y, z in _PERM) + _b64(0, 0, c[63], 2)
    prefix = "$6$" if rounds == 5000 else f"$6$rounds={rounds}$"
    return f"{prefix}{s.decode()}${enc}"
