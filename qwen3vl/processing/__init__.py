"""Input pipeline: messages -> token ids, loss mask and vision tensors (see docs/PROCESSING.md).

Entry point: `qwen3vl.processing.processor.load_processor(path)`. Submodules import torch/PIL/PyAV only when used,
and this package imports nothing heavy itself.
"""

from qwen3vl.processing.errors import MediaError, MessageFormatError

__all__ = ["MediaError", "MessageFormatError"]
