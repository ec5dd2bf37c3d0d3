"""What media a request may use: where images and videos may come from, and how large they may be made.

A server renders messages written by strangers, so every media source is checked before the processor sees it:
data URIs are always allowed; http(s) URLs only with `--allow-remote-media` (the processor then fetches them with
a timeout and a byte limit); local paths and `file://` URLs only inside `--allowed-local-media-path` (after
resolving symlinks and `..`). Per-request size options (`min_pixels`, `max_pixels`, `resized_height` x
`resized_width`, frame counts) may not exceed the server's budget, so one request cannot ask for a
gigapixel resize.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen3vl.processing.errors import where
from qwen3vl.serve.errors import bad_request


@dataclass(frozen=True)
class MediaPolicy:
    allow_remote: bool = False
    local_root: Path | None = None  # resolved folder, or None: no local files at all
    max_image_pixels: int = 16777216  # the most pixels one image (or video frame) may be resized to
    max_video_pixels: int = 25165824
    max_frames: int = 768


def apply_request_options(messages: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
    """Request-level media options on every image/video part that does not set its own (canonical messages)."""
    if not options:
        return messages
    out = []
    for m in messages:
        if isinstance(m.get("content"), list):
            parts = [{**options, **p} if p.get("type") in ("image", "video") else p for p in m["content"]]
            m = {**m, "content": parts}
        out.append(m)
    return out


def check_media(messages: list[dict[str, Any]], policy: MediaPolicy) -> None:
    """Raise a 400 (param "messages") for a source or a size option the policy does not allow."""
    for i, m in enumerate(messages):
        content = m.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type")
            if kind not in ("image", "video"):
                continue
            loc = where(i, j, kind)
            src = part.get(kind)
            for s in src if isinstance(src, (list, tuple)) else [src]:
                _check_source(s, policy, loc)
            _check_size(part, kind, policy, loc)


def _check_source(src: Any, policy: MediaPolicy, loc: str) -> None:
    if not isinstance(src, str):
        return  # not a path or URL: the processor rejects what it cannot read
    if src.startswith("data:"):
        return
    if src.startswith(("http://", "https://")):
        if not policy.allow_remote:
            raise bad_request(f"{loc}: remote media URLs are disabled on this server (start it with "
                              "--allow-remote-media); send the image as a data URI instead", "messages")
        return
    if policy.local_root is None:
        raise bad_request(f"{loc}: local file paths are not allowed on this server (start it with "
                          "--allowed-local-media-path DIR); send the image as a data URI instead", "messages")
    if src.startswith("file://"):
        parsed = urllib.parse.urlparse(src)
        src = urllib.parse.unquote(parsed.netloc + parsed.path)
    elif "://" in src:
        raise bad_request(f"{loc}: unsupported URL scheme in {src[:60]!r}; use a data URI, http(s) or file://",
                          "messages")
    try:
        path = Path(src).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        raise bad_request(f"{loc}: cannot read path {src[:200]!r}", "messages") from None
    if not path.is_relative_to(policy.local_root):
        raise bad_request(f"{loc}: {src[:200]!r} is outside the allowed media folder", "messages")


def _check_size(part: dict[str, Any], kind: str, policy: MediaPolicy, loc: str) -> None:
    cap = policy.max_image_pixels if kind == "image" else policy.max_video_pixels
    for key in ("min_pixels", "max_pixels"):
        value = part.get(key)
        if _is_num(value) and value > cap:
            raise bad_request(f"{loc}: {key} {value} is above this server's limit of {cap} pixels", key)
    h, w = part.get("resized_height"), part.get("resized_width")
    if _is_num(h) and _is_num(w) and h * w > cap:
        raise bad_request(f"{loc}: resized_height x resized_width = {h * w} pixels is above this server's limit "
                          f"of {cap}", "messages")
    if kind == "video":
        for key in ("max_frames", "min_frames", "nframes"):
            value = part.get(key)
            if _is_num(value) and value > policy.max_frames:
                raise bad_request(f"{loc}: {key} {value} is above this server's limit of {policy.max_frames} "
                                  "frames", key)
        total = part.get("total_pixels")
        if _is_num(total) and total > cap * policy.max_frames:
            raise bad_request(f"{loc}: total_pixels {total} is above this server's limit", "messages")


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
