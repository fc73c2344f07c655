"""guestinfo value encodings, as cloud-init's VMware datasource accepts them, with size caps.

cloud-init (`DataSourceVMware.decode`) accepts `gz+b64`/`gzip+base64`, `b64`/`base64`, or no encoding.
Decoding here is bounded: the encoded value, the base64-decoded bytes and the decompressed bytes are each
capped, so a gzip bomb is refused after reading at most the cap, never expanded in memory.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import zlib

GZIP_BASE64 = "gzip+base64"
BASE64 = "base64"
ENCODINGS = {"gz+b64": GZIP_BASE64, GZIP_BASE64: GZIP_BASE64, "b64": BASE64, BASE64: BASE64}

# VMX values are limited in practice to about 1 MiB; a decoded config above 4 MiB is not a config.
MAX_ENCODED = 2 * 1024 * 1024
MAX_DECODED = 4 * 1024 * 1024


class DecodeError(ValueError):
    """A guestinfo value could not be decoded; the message says why (never the value)."""


def encode(payload: bytes | str, encoding: str = GZIP_BASE64) -> str:
    """Encode `payload` for a guestinfo key (`gzip+base64` is what builder deploy writes)."""
    data = payload.encode() if isinstance(payload, str) else payload
    kind = ENCODINGS.get(encoding)
    if kind == GZIP_BASE64:
        # mtime=0 keeps the value stable, so deploy can tell an unchanged VM from a changed one.
        return base64.b64encode(gzip.compress(data, mtime=0)).decode("ascii")
    if kind == BASE64:
        return base64.b64encode(data).decode("ascii")
    if encoding == "":
        return data.decode()
    raise ValueError(f"unknown encoding {encoding!r}")


def decode(
    value: str,
    encoding: str | None,
    *,
    max_encoded: int = MAX_ENCODED,
    max_decoded: int = MAX_DECODED,
) -> bytes:
    """Decode a guestinfo value; raise DecodeError naming the problem."""
    if len(value) > max_encoded:
        raise DecodeError(f"value is {len(value)} bytes, over the {max_encoded}-byte cap")
    enc = (encoding or "").strip().lower()
    if not enc:
        return value.encode("utf-8", "surrogateescape")
    kind = ENCODINGS.get(enc)
    if kind is None:
        raise DecodeError(f"unknown encoding {encoding!r} (expected gzip+base64, base64 or none)")
    try:
        raw = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"invalid base64: {exc}") from None
    if kind == BASE64:
        if len(raw) > max_decoded:
            raise DecodeError(f"decoded value is over the {max_decoded}-byte cap")
        return raw
    return _gunzip_capped(raw, max_decoded)


def _gunzip_capped(raw: bytes, cap: int) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            out = stream.read(cap + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DecodeError(f"invalid gzip data: {exc}") from None
    if len(out) > cap:
        raise DecodeError(f"decompressed value exceeds the {cap}-byte cap (refused, not expanded)")
    return out
