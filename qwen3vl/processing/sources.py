"""Where media bytes come from: local paths, `file://`, data URIs, raw bytes, and (opt-in) http(s) URLs.

Remote fetching is off by default: a server that renders user messages must not fetch arbitrary URLs for them
(SSRF). When enabled it is bounded by a timeout and a byte limit, checked against Content-Length and while reading.
"""

from __future__ import annotations

import base64
import binascii
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from qwen3vl.processing.errors import MediaError


@dataclass(frozen=True)
class FetchOptions:
    allow_remote: bool = False
    timeout_s: float = 10.0
    max_remote_bytes: int = 256 * 2**20


def is_remote(src: str) -> bool:
    return src.startswith(("http://", "https://"))


def resolve(src: str | bytes | os.PathLike, opts: FetchOptions) -> bytes | Path:
    """Bytes (data URI, URL, raw bytes) or an existing local Path for a string/bytes/path source."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise MediaError("media bytes are empty")
        return data
    if isinstance(src, os.PathLike):
        return _local(Path(src))
    if not isinstance(src, str):
        raise MediaError(f"unsupported media source of type {type(src).__name__}")
    if src.startswith("data:"):
        return _data_uri(src)
    if is_remote(src):
        return _fetch(src, opts)
    if src.startswith("file://"):
        parsed = urllib.parse.urlparse(src)
        return _local(Path(urllib.parse.unquote(parsed.netloc + parsed.path)))
    return _local(Path(src))


def _local(path: Path) -> Path:
    if not path.is_file():
        raise MediaError(f"file not found: {str(path)!r}")
    return path


def _data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep:
        raise MediaError("data URI has no ',' separating the header from the data")
    if header.endswith(";base64"):
        try:
            data = base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError) as e:
            raise MediaError(f"data URI is not valid base64: {e}") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if not data:
        raise MediaError("data URI holds no data")
    return data


def _fetch(url: str, opts: FetchOptions) -> bytes:
    if not opts.allow_remote:
        raise MediaError(
            f"remote media is disabled, refusing to fetch {url!r}; load the processor with "
            "allow_remote_media=True to allow http(s) URLs"
        )
    limit = opts.max_remote_bytes
    deadline = time.monotonic() + opts.timeout_s  # urlopen's timeout is per socket read, not for the whole body
    try:
        with urllib.request.urlopen(url, timeout=opts.timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise MediaError(f"{url!r} is {int(declared)} bytes, above the limit of {limit}")
            chunks, size = [], 0
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise MediaError(f"{url!r} is larger than the limit of {limit} bytes")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise MediaError(f"fetching {url!r} took longer than {opts.timeout_s} s")
    except MediaError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise MediaError(f"could not fetch {url!r}: {e}") from None
    if not chunks:
        raise MediaError(f"{url!r} returned no data")
    return b"".join(chunks)
