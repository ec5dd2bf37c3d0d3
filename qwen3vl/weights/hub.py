"""Resolve a model argument to a local checkpoint folder: a path as is, or a Hugging Face hub id downloaded
(or found in the local cache) through `huggingface_hub`."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


class ModelNotFoundError(FileNotFoundError):
    """Neither a local folder nor a reachable (or cached) hub repository."""


def resolve_checkpoint(path: str | Path, revision: str | None = None, *, marker: str = "config.json",
                       what: str = "Qwen3-VL checkpoint") -> Path:
    """`marker` is the file a folder must hold to be one (`adapter_config.json` for a LoRA adapter)."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / marker).exists():
            raise ModelNotFoundError(f"{p} is a folder but has no {marker}; is it a {what}?")
        return p
    text = str(path)
    if p.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise ModelNotFoundError(f"{what} {text!r} is not a folder and does not look like a hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a core dependency
        raise ModelNotFoundError("huggingface_hub is needed to download models by hub id") from e
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=CHECKPOINT_PATTERNS))
    except Exception as online_error:  # offline, unknown repo, gated repo...
        try:
            return Path(snapshot_download(text, revision=revision, allow_patterns=CHECKPOINT_PATTERNS,
                                          local_files_only=True))
        except Exception:
            raise ModelNotFoundError(
                f"could not download {text!r} from the Hugging Face hub and it is not in the local cache "
                f"({type(online_error).__name__}: {online_error}). Pass a local checkpoint folder, or run once "
                f"with network access (set HF_TOKEN for gated models).") from online_error
