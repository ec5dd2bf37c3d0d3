"""Public entry point: `load_processor(path)` -> `Processor`, which turns OpenAI-style messages into model inputs.

* `processor(messages)` -> dict of tensors for `model.forward` (`input_ids`, `attention_mask` left-padded, and
  `pixel_values`/`image_grid_thw`/`pixel_values_videos`/`video_grid_thw` when present).
* `processor.prepare(messages)` -> `Prepared`: one conversation as plain lists (ids, loss mask, media with hashes and
  their token spans) for the generation engine and the trainer.
* `processor.render_text(messages)` -> the rendered prompt string.

Video prompt layout ("unwrapped", the default, is what the checkpoints were released with: transformers 4.57 and
vLLM): each temporal patch is `<{t:.1f} seconds><|vision_start|><|video_pad|>*N<|vision_end|>` and the template's own
`<|vision_start|>...<|vision_end|>` pair is replaced. "wrapped" keeps that outer pair around the whole expansion, as
transformers 5.23 does (use it for parity tests against 5.23).

Tokenisation: the whole expanded prompt is tokenised in one pass (so ids equal tokenising the text), with one pad
token per media slot that is widened to the media's token count afterwards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from qwen3vl.processing import chat, chat_template
from qwen3vl.processing import chat_template as templates  # (load_processor's chat_template is an argument)
from qwen3vl.processing.errors import MediaError, MessageFormatError
from qwen3vl.processing.image import DEFAULT_MAX_IMAGE_PIXELS, ImageSize, load_image, process_image
from qwen3vl.processing.media import ProcessedImage, ProcessedVideo
from qwen3vl.processing.messages import is_batch, normalize_messages, normalize_tools
from qwen3vl.processing.preprocessor_config import ImageConfig, VideoConfig, load_preprocessor_configs
from qwen3vl.processing.sampling import VideoRule
from qwen3vl.processing.sources import FetchOptions
from qwen3vl.processing.tokenizer import Tokenizer
from qwen3vl.processing.video import VideoOptions, process_video_file, process_video_frames

logger = logging.getLogger(__name__)

VideoLayout = Literal["unwrapped", "wrapped"]
TrainOn = Literal["all", "last"]


@dataclass
class Prepared:
    """One conversation, ready for the engine or the trainer.

    `loss_mask[i]` is 1 where `input_ids[i]` is an assistant target token (see `chat.py`), never on media pads.
    `image_spans[k]` is the [start, end) range of image k's pad tokens; `video_spans[k]` one range per temporal patch.
    """

    input_ids: list[int]
    loss_mask: list[int]
    images: list[ProcessedImage]
    videos: list[ProcessedVideo]
    image_spans: list[tuple[int, int]]
    video_spans: list[list[tuple[int, int]]]
    text: str

    def mm_token_type_ids(self, image_token_id: int, video_token_id: int) -> list[int]:
        """0 text, 1 image pad, 2 video pad (transformers' `mm_token_type_ids`)."""
        return [1 if t == image_token_id else 2 if t == video_token_id else 0 for t in self.input_ids]


class Processor:
    """Messages -> model inputs for one checkpoint. Build it with `load_processor`."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        image_config: ImageConfig | None = None,
        video_config: VideoConfig | None = None,
        chat_format: chat.ChatFormat = "instruct",
        checkpoint_template: str | None = None,
        video_layout: VideoLayout = "unwrapped",
        video_rule: VideoRule = "qwen-vl-utils",
        fetch: FetchOptions | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        custom_template: str | None = None,
    ):
        if video_layout not in ("unwrapped", "wrapped"):
            raise ValueError(f"video_layout must be 'unwrapped' or 'wrapped', got {video_layout!r}")
        if video_rule not in ("qwen-vl-utils", "hf"):
            raise ValueError(f"video_rule must be 'qwen-vl-utils' or 'hf', got {video_rule!r}")
        self.tokenizer = tokenizer
        self.image_config = image_config or ImageConfig()
        self.video_config = video_config or VideoConfig()
        self.chat_format = chat_format
        self.checkpoint_template = checkpoint_template
        self.video_layout = video_layout
        self.video_rule = video_rule
        self.fetch = fetch or FetchOptions()
        self.max_image_pixels = max_image_pixels
        # a chat template rendered in the Jinja sandbox instead of our renderer (`load_processor(chat_template=)`),
        # with the special-token variables transformers passes it (bos_token, eos_token, pad_token, unk_token)
        self.custom_template = custom_template
        self.template_tokens: dict[str, str] = {}
        sp = tokenizer.special
        self._vs, self._ve = tokenizer.id_to_token(sp.vision_start), tokenizer.id_to_token(sp.vision_end)
        self._image_pad, self._video_pad = tokenizer.id_to_token(sp.image), tokenizer.id_to_token(sp.video)

    # -- text ----------------------------------------------------------------------------------------------------
    def render(
        self, messages: Any, *, add_generation_prompt: bool = True, tools: Any = None, add_vision_id: bool = False,
        continue_final_message: bool = False,
    ) -> chat.RenderedChat:
        """Validated, rendered conversation (text, media slots, target spans). `continue_final_message=True` ends
        inside the final message (pass `add_generation_prompt=False` with it), as transformers does."""
        msgs = normalize_messages(messages)
        if self.custom_template is not None:
            return self._render_custom(msgs, normalize_tools(tools), add_generation_prompt, add_vision_id,
                                       continue_final_message)
        return chat.render(msgs, self.chat_format, normalize_tools(tools), add_generation_prompt, add_vision_id,
                           continue_final_message)

    def _render_custom(self, msgs: list[dict[str, Any]], tools: Any, add_generation_prompt: bool,
                       add_vision_id: bool, continue_final_message: bool) -> chat.RenderedChat:
        import jinja2

        chat.check_text(msgs)
        shown = [_as_template_sees(m) for m in msgs]
        try:
            text = chat_template.render_template(self.custom_template, shown, tools, add_generation_prompt,
                                                 add_vision_id, continue_final_message, documents=None,
                                                 **self.template_tokens)
        except (jinja2.TemplateError, TypeError, ValueError, AttributeError, KeyError) as e:
            # (the template's own raise_exception, or a template that breaks on this conversation)
            raise MessageFormatError(f"the chat template could not render this conversation: {e}") from None
        return chat.from_template_text(text, msgs, partial=continue_final_message)

    def render_text(
        self,
        messages: Any,
        *,
        add_generation_prompt: bool = True,
        tools: Any = None,
        add_vision_id: bool = False,
        use_checkpoint_template: bool = False,
        continue_final_message: bool = False,
    ) -> str:
        """The prompt as text, media as the template's one-token placeholders.

        `use_checkpoint_template=True` renders the checkpoint's own template in a Jinja sandbox instead (a
        cross-check, or for custom templates); it needs the checkpoint to ship one.
        """
        if use_checkpoint_template:
            if self.checkpoint_template is None:
                raise ValueError("this checkpoint ships no chat template")
            return chat_template.render_template(
                self.checkpoint_template,
                normalize_messages(messages),
                normalize_tools(tools),
                add_generation_prompt,
                add_vision_id,
                continue_final_message,
            )
        return self.render(
            messages, add_generation_prompt=add_generation_prompt, tools=tools, add_vision_id=add_vision_id,
            continue_final_message=continue_final_message,
        ).text

    # -- media ---------------------------------------------------------------------------------------------------
    def process_image(self, part: dict[str, Any]) -> ProcessedImage:
        """One canonical image part (`{"type": "image", "image": src, **options}`)."""
        size = ImageSize.from_item(part)
        img = load_image(part["image"], self.fetch, self.max_image_pixels)
        return process_image(img, self.image_config, size)

    def process_video(self, part: dict[str, Any]) -> ProcessedVideo:
        """One canonical video part: a file-like source or a list of frames."""
        opts = VideoOptions.from_item(part)
        src = part["video"]
        if isinstance(src, (list, tuple)):
            return process_video_frames(
                src, self.video_config, opts, self.video_rule, self.fetch, self.max_image_pixels
            )
        return process_video_file(src, self.video_config, opts, self.video_rule, self.fetch)

    def _video_text(self, video: ProcessedVideo) -> str:
        frames = "".join(f"<{t:.1f} seconds>{self._vs}{self._video_pad}{self._ve}" for t in video.timestamps)
        return f"{self._vs}{frames}{self._ve}" if self.video_layout == "wrapped" else frames

    # -- one conversation ----------------------------------------------------------------------------------------
    def prepare(
        self,
        messages: Any,
        *,
        add_generation_prompt: bool = True,
        tools: Any = None,
        add_vision_id: bool = False,
        train_on: TrainOn = "all",
        continue_final_message: bool = False,
    ) -> Prepared:
        """Tokenised conversation with processed media. For training pass `add_generation_prompt=False`;
        `train_on="last"` keeps only the final assistant turn in the loss mask."""
        rendered = self.render(
            messages, add_generation_prompt=add_generation_prompt, tools=tools, add_vision_id=add_vision_id,
            continue_final_message=continue_final_message,
        )
        for ref in rendered.dropped:
            logger.warning(
                "%s: the %s chat format does not show this %s; ignored", ref.location, self.chat_format, ref.kind
            )
        images: list[ProcessedImage] = []
        videos: list[ProcessedVideo] = []
        slot_text: list[str] = []
        for ref in rendered.media:
            try:
                if ref.kind == "image":
                    images.append(self.process_image(ref.part))
                    slot_text.append(f"{self._vs}{self._image_pad}{self._ve}")
                else:
                    videos.append(self.process_video(ref.part))
                    slot_text.append(self._video_text(videos[-1]))
            except MediaError as e:
                raise MediaError(f"{ref.location}: {e}") from None
        text, spans = rendered.expand(lambda k: slot_text[k])
        if train_on == "last" and spans:
            last_msg = spans[-1].message_index
            spans = [s for s in spans if s.message_index == last_msg]
        return self._tokenize(text, spans, images, videos, rendered.text)

    def _tokenize(
        self,
        text: str,
        spans: list[chat.TargetSpan],
        images: list[ProcessedImage],
        videos: list[ProcessedVideo],
        rendered_text: str,
    ) -> Prepared:
        sp = self.tokenizer.special
        ids, offsets = self.tokenizer.encode_with_offsets(text)
        n_image_pads = sum(1 for t in ids if t == sp.image)
        n_video_pads = sum(1 for t in ids if t == sp.video)
        n_groups = sum(v.grid_thw[0] for v in videos)
        if n_image_pads != len(images) or n_video_pads != n_groups:
            raise MessageFormatError(
                f"the prompt has {n_image_pads} {self._image_pad} / {n_video_pads} {self._video_pad} tokens for "
                f"{len(images)} image(s) / {n_groups} video frame group(s); message text must not contain these "
                "special tokens literally"
            )
        out_ids: list[int] = []
        mask: list[int] = []
        image_spans: list[tuple[int, int]] = []
        video_spans: list[list[tuple[int, int]]] = [[] for _ in videos]
        groups = iter([(k, v.tokens_per_frame) for k, v in enumerate(videos) for _ in range(v.grid_thw[0])])
        span_iter = iter(spans)
        span = next(span_iter, None)
        for t, (start, end) in zip(ids, offsets, strict=True):
            while span is not None and start >= span.end:
                span = next(span_iter, None)
            if t == sp.image:
                n = images[len(image_spans)].num_tokens
                image_spans.append((len(out_ids), len(out_ids) + n))
            elif t == sp.video:
                k, n = next(groups)
                video_spans[k].append((len(out_ids), len(out_ids) + n))
            else:
                out_ids.append(t)
                mask.append(int(span is not None and span.start <= start and end <= span.end))
                continue
            out_ids.extend([t] * n)
            mask.extend([0] * n)
        return Prepared(out_ids, mask, images, videos, image_spans, video_spans, rendered_text)

    # -- batches -------------------------------------------------------------------------------------------------
    def __call__(
        self,
        messages: Any,
        *,
        add_generation_prompt: bool = True,
        tools: Any = None,
        add_vision_id: bool = False,
        return_mm_token_type_ids: bool = False,
        continue_final_message: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One conversation or a list of them -> the keyword tensors of the model's `forward`."""
        conversations = messages if is_batch(messages) else [messages]
        prepared = [
            self.prepare(c, add_generation_prompt=add_generation_prompt, tools=tools, add_vision_id=add_vision_id,
                         continue_final_message=continue_final_message)
            for c in conversations
        ]
        return self.collate(prepared, return_mm_token_type_ids=return_mm_token_type_ids)

    def collate(self, prepared: Sequence[Prepared], return_mm_token_type_ids: bool = False) -> dict[str, torch.Tensor]:
        """Left-pad (pad id from the checkpoint) and concatenate media in batch order."""
        sp = self.tokenizer.special
        width = max(len(p.input_ids) for p in prepared)
        input_ids = torch.full((len(prepared), width), sp.pad, dtype=torch.long)
        attention_mask = torch.zeros((len(prepared), width), dtype=torch.long)
        mm = torch.zeros((len(prepared), width), dtype=torch.long)
        for row, p in enumerate(prepared):
            n = len(p.input_ids)
            input_ids[row, width - n :] = torch.tensor(p.input_ids, dtype=torch.long)
            attention_mask[row, width - n :] = 1
            if return_mm_token_type_ids:
                mm[row, width - n :] = torch.tensor(p.mm_token_type_ids(sp.image, sp.video), dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        images = [im for p in prepared for im in p.images]
        videos = [v for p in prepared for v in p.videos]
        if images:
            out["pixel_values"] = torch.cat([im.pixel_values for im in images])
            out["image_grid_thw"] = torch.tensor([im.grid_thw for im in images], dtype=torch.long)
        if videos:
            out["pixel_values_videos"] = torch.cat([v.pixel_values for v in videos])
            out["video_grid_thw"] = torch.tensor([v.grid_thw for v in videos], dtype=torch.long)
        if return_mm_token_type_ids:
            out["mm_token_type_ids"] = mm
        return out


def _chat_format(folder: Path, template: str | None, requested: str) -> chat.ChatFormat:
    if requested in ("instruct", "thinking"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"chat_format must be 'auto', 'instruct' or 'thinking', got {requested!r}")
    if template is None:
        guess: chat.ChatFormat = "thinking" if "thinking" in folder.resolve().name.lower() else "instruct"
        logger.info("%s ships no chat template; using the %s format (from the folder name)", folder, guess)
        return guess
    detected = chat_template.detect_format(template)
    if chat_template.matches_builtin(template) is None:
        logger.warning(
            "%s ships a chat template that is not the official Qwen3-VL %s template; rendering with the built-in %s "
            "renderer (render_text(..., use_checkpoint_template=True) renders the shipped one)",
            folder,
            detected,
            detected,
        )
    return detected


def load_processor(
    path: str | Path,
    *,
    chat_format: Literal["auto", "instruct", "thinking"] = "auto",
    video_layout: VideoLayout = "unwrapped",
    video_rule: VideoRule = "qwen-vl-utils",
    allow_remote_media: bool = False,
    remote_timeout_s: float = 10.0,
    max_remote_bytes: int = 256 * 2**20,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    chat_template: str | None = None,
) -> Processor:
    """Processor for a checkpoint folder (tokenizer.json required; config.json, preprocessor configs and a chat
    template are read when present).

    `chat_format="auto"` takes Instruct/Thinking from the shipped template (a Thinking template reads
    `reasoning_content` and opens `<think>`), else from the folder name, else Instruct.

    `chat_template`: None renders with our renderer (the official templates, exactly); "checkpoint" renders the
    template the checkpoint ships, and a file path (or a template's text) that template, in transformers' Jinja
    sandbox, for fine-tunes whose template differs. Such a template must render every image and video part, as
    the official ones do, and it marks no assistant spans, so it is for generation, not training.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    config: dict[str, Any] = {}
    if (folder / "config.json").is_file():
        with open(folder / "config.json", encoding="utf-8") as f:
            config = json.load(f)
    tokenizer = Tokenizer.from_folder(folder, config)
    image_config, video_config = load_preprocessor_configs(folder)
    template = templates.load_checkpoint_template(folder)
    custom = _custom_template(chat_template, template)
    if chat_format not in ("auto", "instruct", "thinking"):
        raise ValueError(f"chat_format must be 'auto', 'instruct' or 'thinking', got {chat_format!r}")
    if custom is not None:
        import jinja2

        try:  # broken templates are found now, not as every request's error
            templates.compile_template(custom)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"chat template: line {e.lineno}: {e.message}") from None
        fmt: chat.ChatFormat = templates.probe_format(custom) if chat_format == "auto" else chat_format
    else:
        fmt = _chat_format(folder, template, chat_format)
    processor = Processor(
        tokenizer,
        image_config,
        video_config,
        fmt,
        template,
        video_layout,
        video_rule,
        FetchOptions(allow_remote_media, remote_timeout_s, max_remote_bytes),
        max_image_pixels,
        custom,
    )
    processor.template_tokens = _template_tokens(folder)
    return processor


def _template_tokens(folder: Path) -> dict[str, str]:
    """tokenizer_config.json's special tokens, as the variables transformers gives every chat template."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def _as_template_sees(message: dict[str, Any]) -> dict[str, Any]:
    """A message as transformers hands it to a template: keys holding None left out (`name: null` is no name), and
    the reasoning also under `thinking`, the name other templates read."""
    out = {k: v for k, v in message.items() if v is not None}
    if isinstance(out.get("content"), list):
        out["content"] = [{k: v for k, v in part.items() if v is not None} for part in out["content"]]
    if "reasoning_content" in out and "thinking" not in out:
        out["thinking"] = out["reasoning_content"]
    return out


def _custom_template(option: str | None, shipped: str | None) -> str | None:
    if option is None:
        return None
    if option == "checkpoint":
        if shipped is None:
            raise ValueError("chat_template='checkpoint': this checkpoint ships no chat template")
        return shipped
    if "{{" in option or "{%" in option:  # a template's text itself
        return option
    path = Path(option).expanduser()
    if path.is_file():
        return path.read_text("utf-8")
    raise ValueError(f"chat template {option!r}: no such file (pass a .jinja file, a template's text, or "
                     "'checkpoint' for the shipped one)")
