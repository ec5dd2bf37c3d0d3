"""Exception types for bad processor input.

Both derive from `ValueError`, so callers that already catch `ValueError` keep working, and both carry a message
that names the offending item ("message 1, content part 2 (image): ...") so a user can find it in a long request.
"""

from __future__ import annotations


class MessageFormatError(ValueError):
    """The messages are not shaped as an OpenAI-style chat: wrong types, missing or unknown roles or parts."""


class MediaError(ValueError):
    """An image or video could not be loaded or is unusable (corrupt, empty, too large, extreme aspect ratio)."""


def where(message_index: int | None, part_index: int | None, kind: str | None = None) -> str:
    """The human-readable location prefix used in error messages ("message 1, content part 2 (image)")."""
    bits = []
    if message_index is not None:
        bits.append(f"message {message_index}")
    if part_index is not None:
        bits.append(f"content part {part_index}")
    text = ", ".join(bits) or "input"
    return f"{text} ({kind})" if kind else text
