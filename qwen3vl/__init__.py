"""qwen3vl: a from-scratch PyTorch implementation of the Qwen3-VL vision-language model family.

Public entry points are imported lazily, so `import qwen3vl` stays cheap and optional parts (the server,
the agent) only load what they need when used.
"""

from __future__ import annotations

from qwen3vl._lazy import lazy_exports

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "load_model": "qwen3vl.model.qwen3vl",
    "Qwen3VLForConditionalGeneration": "qwen3vl.model.qwen3vl",
    "Qwen3VLConfig": "qwen3vl.config",
    "TextConfig": "qwen3vl.config",
    "VisionConfig": "qwen3vl.config",
    "load_config": "qwen3vl.config",
    "PRESETS": "qwen3vl.config",
    "preset": "qwen3vl.config",
    "load_processor": "qwen3vl.processing.processor",
    "LLM": "qwen3vl.llm",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
