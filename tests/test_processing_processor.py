"""The processor end to end: input_ids / mm_token_type_ids / pixel tensors against transformers 5.23's
Qwen3VLProcessor over the tiny checkpoint (spec §13.2), batching, loss masks and media spans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures.processing.references import hf_processor, unpatchify, write_video
from PIL import Image

from qwen3vl.processing.errors import MessageFormatError
from qwen3vl.processing.processor import load_processor
from qwen3vl.processing.testing import tiny_token_ids, write_tiny_checkpoint

IDS = tiny_token_ids()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    write_tiny_checkpoint(folder)
    return folder


@pytest.fixture(scope="module")
def hf(folder):
    return hf_processor(folder)


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", 25, 10)


def _img(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hf_video_inputs(video):
    """Our sampled, resized, normalised frames and their metadata, as transformers' video processor takes them."""
    from transformers.video_utils import VideoMetadata

    frames = unpatchify(video.pixel_values, video.grid_thw)
    meta = VideoMetadata(
        total_num_frames=max(video.frame_indices) + 1, fps=video.video_fps, frames_indices=list(video.frame_indices)
    )
    return frames, meta


_NO_TV = dict(
    do_sample_frames=False,
    videos_kwargs=dict(
        do_resize=False, do_convert_rgb=False, do_rescale=False, do_normalize=False, cap_pixels_per_frame=False
    ),
)


def test_images_match_transformers(folder, hf):
    p = load_processor(folder)
    import base64

    from fixtures.processing.references import to_bytes

    a, b = _img(100, 70, 1), _img(333, 1000, 2)
    b_uri = "data:image/png;base64," + base64.b64encode(to_bytes(b)).decode()
    msgs = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": a},
                {"type": "text", "text": "and é "},
                {"type": "image_url", "image_url": {"url": b_uri}},
                {"type": "text", "text": "?"},
            ],
        },
    ]
    ours = p(msgs, return_mm_token_type_ids=True)
    ref = hf(text=[p.render_text(msgs)], images=[a, b], return_tensors="pt")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(ours[key], ref[key]), key
    torch.testing.assert_close(ours["pixel_values"], ref["pixel_values"].float(), atol=1e-6, rtol=0)
    assert set(p(msgs)) == {"input_ids", "attention_mask", "pixel_values", "image_grid_thw"}


def test_video_wrapped_layout_matches_transformers_5(folder, hf, video_path):
    p = load_processor(folder, video_layout="wrapped")
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "video", "video": str(video_path)},
                {"type": "image", "image": _img(64, 64)},
                {"type": "text", "text": "What?"},
            ],
        }
    ]
    prepared = p.prepare(msgs)
    ours = p.collate([prepared], return_mm_token_type_ids=True)
    frames, meta = _hf_video_inputs(prepared.videos[0])
    ref = hf(
        text=[p.render_text(msgs)],
        images=[_img(64, 64)],
        videos=[frames],
        video_metadata=[meta],
        return_tensors="pt",
        **_NO_TV,
    )
    for key in ("input_ids", "mm_token_type_ids", "video_grid_thw", "image_grid_thw"):
        assert torch.equal(ours[key], ref[key]), key
    torch.testing.assert_close(ours["pixel_values_videos"], ref["pixel_values_videos"], atol=1e-6, rtol=0)
    text = p.tokenizer.decode(ours["input_ids"][0].tolist())
    assert "<|vision_start|><0.4 seconds><|vision_start|><|video_pad|>" in text


def test_video_default_layout_is_the_release_layout(folder, hf, video_path):
    """transformers 4.57 / vLLM: the template's <|vision_start|><|video_pad|><|vision_end|> is replaced whole."""
    p = load_processor(folder)
    msgs = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Watch:"},
                {"type": "video_url", "video_url": {"url": f"file://{video_path}"}},
            ],
        }
    ]
    prepared = p.prepare(msgs)
    video = prepared.videos[0]
    n = video.tokens_per_frame
    stamps = "".join(
        f"<{t:.1f} seconds><|vision_start|>" + "<|video_pad|>" * n + "<|vision_end|>" for t in video.timestamps
    )
    expected = p.render_text(msgs).replace("<|vision_start|><|video_pad|><|vision_end|>", stamps)
    assert p.tokenizer.decode(prepared.input_ids) == expected
    assert video.timestamps == (0.4, 2.0) and video.frame_indices == (0, 8, 16, 24)  # 2.5 s at 10 fps -> 4 frames
    ref = hf.tokenizer(expected, return_tensors="pt")["input_ids"]
    assert prepared.input_ids == ref[0].tolist()


def test_batch_is_left_padded_with_the_checkpoint_pad(folder, hf):
    p = load_processor(folder)
    short = [{"role": "user", "content": "hi"}]
    long = [
        {
            "role": "user",
            "content": [{"type": "image", "image": _img(64, 64)}, {"type": "text", "text": "a longer question"}],
        }
    ]
    ours = p([short, long])
    hf.tokenizer.padding_side = "left"
    ref = hf(text=[p.render_text(short), p.render_text(long)], images=[_img(64, 64)], padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], ref["input_ids"])
    assert torch.equal(ours["attention_mask"], ref["attention_mask"])
    assert ours["input_ids"][0, 0].item() == IDS["<|endoftext|>"] == p.tokenizer.special.pad
    assert ours["image_grid_thw"].tolist() == [[1, 16, 16]]


def _targets(p, prep) -> str:
    return p.tokenizer.decode([t for t, m in zip(prep.input_ids, prep.loss_mask, strict=True) if m])


def test_prepare_loss_mask_spans_and_hashes(folder):
    p = load_processor(folder)
    img = _img(64, 64)
    msgs = [
        {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Q1"}]},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2 ünï"},
    ]
    prep = p.prepare(msgs, add_generation_prompt=False)
    assert len(prep.loss_mask) == len(prep.input_ids)
    assert _targets(p, prep) == "A1<|im_end|>A2 ünï<|im_end|>"
    last = p.prepare(msgs, add_generation_prompt=False, train_on="last")
    assert _targets(p, last) == "A2 ünï<|im_end|>"
    ((s, e),) = prep.image_spans
    assert set(prep.input_ids[s:e]) == {IDS["<|image_pad|>"]} and e - s == prep.images[0].num_tokens == 64
    assert prep.input_ids[s - 1] == IDS["<|vision_start|>"] and prep.input_ids[e] == IDS["<|vision_end|>"]
    again = p.prepare([{"role": "user", "content": [{"type": "image", "image": img.copy()}]}])
    assert again.images[0].content_hash == prep.images[0].content_hash
    mm = prep.mm_token_type_ids(p.tokenizer.special.image, p.tokenizer.special.video)
    assert sum(mm) == 64


def test_prepare_video_spans_and_thinking_mask(tmp_path, video_path):
    write_tiny_checkpoint(tmp_path, chat_template="thinking")
    p = load_processor(tmp_path)
    msgs = [
        {
            "role": "user",
            "content": [{"type": "video", "video": str(video_path), "min_pixels": 4096, "max_pixels": 64 * 64}],
        },
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA cat."},
    ]
    prep = p.prepare(msgs, add_generation_prompt=False)
    video = prep.videos[0]
    assert len(prep.video_spans[0]) == video.grid_thw[0]
    for s, e in prep.video_spans[0]:
        assert e - s == video.tokens_per_frame and set(prep.input_ids[s:e]) == {IDS["<|video_pad|>"]}
    assert _targets(p, prep) == "hmm\n</think>\n\nA cat.<|im_end|>"
    gen = p.prepare(msgs[:1])
    assert p.tokenizer.decode(gen.input_ids).endswith("<|im_start|>assistant\n<think>\n")


def test_folder_without_template_uses_builtin_renderer(tmp_path):
    write_tiny_checkpoint(tmp_path, chat_template=None)
    p = load_processor(tmp_path)
    assert p.checkpoint_template is None and p.chat_format == "instruct"
    out = p([{"role": "user", "content": "hi"}])
    assert p.tokenizer.decode(out["input_ids"][0].tolist()) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_literal_pad_token_in_text_is_rejected(folder):
    p = load_processor(folder)
    with pytest.raises(MessageFormatError, match="must not contain these special tokens"):
        p([{"role": "user", "content": "look <|image_pad|>"}])


def test_special_ids_come_from_config(tmp_path):
    import json

    write_tiny_checkpoint(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["image_token_id"] = IDS["<|video_pad|>"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="image_token_id"):
        load_processor(tmp_path)


def test_preprocessor_configs_and_fallbacks(tmp_path):
    import json

    from qwen3vl.processing.preprocessor_config import ImageConfig, VideoConfig, load_preprocessor_configs

    assert load_preprocessor_configs(tmp_path) == (ImageConfig(), VideoConfig())  # shipped Qwen3-VL values
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"min_pixels": 3136, "max_pixels": 1003520, "patch_size": 14, "image_mean": [0.1, 0.2, 0.3]})
    )
    image, video = load_preprocessor_configs(tmp_path)
    assert (image.min_pixels, image.max_pixels, image.factor, image.image_mean) == (3136, 1003520, 28, (0.1, 0.2, 0.3))
    assert (video.patch_size, video.min_pixels, video.fps) == (14, 4096, 2.0)  # inherits patch, keeps video budget
    (tmp_path / "video_preprocessor_config.json").write_text(
        json.dumps({"size": {"shortest_edge": 1, "longest_edge": 2}, "fps": 1, "max_frames": 32})
    )
    _, video = load_preprocessor_configs(tmp_path)
    assert (video.min_pixels, video.max_pixels, video.fps, video.max_frames, video.patch_size) == (1, 2, 1.0, 32, 16)
    with pytest.raises(ValueError, match="min_pixels"):
        ImageConfig(min_pixels=10, max_pixels=5)


CUSTOM_TEMPLATE = (
    "{%- for m in messages -%}<|im_start|>{{ m.role }}\n"
    "{%- if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'image' %}Picture {{ loop.index }}: <|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c.type == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif c.type == 'text' %}{{ c.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor -%}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif -%}"
)


def test_a_custom_chat_template_matches_transformers(folder, hf, tmp_path):
    path = tmp_path / "custom.jinja"
    path.write_text(CUSTOM_TEMPLATE)
    p = load_processor(folder, chat_template=str(path))
    a, b = _img(100, 70, 1), _img(64, 200, 2)
    msgs = [{"role": "system", "content": "You find things."},
            {"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "and"},
                                         {"type": "image", "image": b}, {"type": "text", "text": "where?"}]}]
    text = hf.apply_chat_template(msgs, chat_template=CUSTOM_TEMPLATE, tokenize=False, add_generation_prompt=True)
    assert "Picture 3: " in text and p.render_text(msgs) == text
    ours = p(msgs, return_mm_token_type_ids=True)
    ref = hf(text=[text], images=[a, b], return_tensors="pt")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(ours[key], ref[key]), key
    assert not torch.equal(ours["input_ids"][0, :8], load_processor(folder)(msgs)["input_ids"][0, :8])
    # the shipped template through the same path gives our renderer's prompt; text passed directly works too
    same = load_processor(folder, chat_template="checkpoint")
    assert torch.equal(same(msgs)["input_ids"], load_processor(folder)(msgs)["input_ids"])
    assert load_processor(folder, chat_template=CUSTOM_TEMPLATE).render_text(msgs) == text


def test_a_custom_chat_template_that_drops_media_or_raises_is_refused(folder, tmp_path):
    msgs = [{"role": "user", "content": [{"type": "image", "image": _img(32, 32)}, {"type": "text", "text": "hi"}]}]
    dropping = load_processor(folder, chat_template=CUSTOM_TEMPLATE.replace("<|image_pad|>", "image"))
    with pytest.raises(MessageFormatError, match="shows 0 image.*hold image"):
        dropping(msgs)
    raising = load_processor(folder, chat_template="{{ raise_exception('no images here') }}")
    with pytest.raises(MessageFormatError, match="could not render.*no images here"):
        raising(msgs)
    with pytest.raises(ValueError, match="no such file"):
        load_processor(folder, chat_template=str(tmp_path / "missing.jinja"))


@pytest.mark.parametrize("body", [
    "{{ m.content + eos_token }}",                       # the special tokens transformers passes
    "{{ m.content ~ pad_token }}",
    "{{ messages | tojson(indent=2, sort_keys=true) }}",  # tojson's keyword arguments
    "{% if documents is not none %}DOCS{% endif %}{{ m.content }}",
    "{% if m.name is defined %}[{{ m.name }}]{% endif %}{{ m.content }}",  # a key sent as null is no key
    "{{ m.thinking or '' }}|{{ m.content }}",           # reasoning under transformers' other name too
])
def test_custom_templates_see_what_transformers_gives_them(folder, hf, body):
    template = "{% for m in messages %}" + body + "\n{% endfor %}"
    msgs = [{"role": "user", "content": "hi", "name": None},
            {"role": "assistant", "content": "ok", "reasoning_content": "R"}]
    ours = load_processor(folder, chat_template=template).render_text(msgs, add_generation_prompt=False)
    want = hf.apply_chat_template(msgs, chat_template=template, tokenize=False)
    assert ours == want


def test_custom_template_safety_and_errors(folder, tmp_path):
    target = tmp_path / "written.png"
    evil = "{% for m in messages %}{% for c in m.content %}{{ c.image.save('" + str(target) + "') }}{% endfor %}" \
           "{% endfor %}"
    msgs = [{"role": "user", "content": [{"type": "image", "image": _img(16, 16)}]}]
    with pytest.raises(MessageFormatError):  # the template sees "<Image>", not the image: nothing to call
        load_processor(folder, chat_template=evil)(msgs)
    assert not target.exists()
    shown = "{% for m in messages %}{% for c in m.content %}{{ c.image }}{{ '<|vision_start|><|image_pad|>" \
            "<|vision_end|>' }}{% endfor %}{% endfor %}"
    assert load_processor(folder, chat_template=shown).render_text(msgs, add_generation_prompt=False) == \
        "<Image><|vision_start|><|image_pad|><|vision_end|>"
    with pytest.raises(ValueError, match="chat template: line 1"):  # broken templates fail at load
        load_processor(folder, chat_template="{% for m in messages %}{{ m.content }")
    with pytest.raises(ValueError, match="chat_format"):
        load_processor(folder, chat_template=CUSTOM_TEMPLATE, chat_format="bogus")
    # a prefilled answer whose final message ends with an image: the cut leaves the image out, as our renderer does
    prefilled = [{"role": "user", "content": "q"},
                 {"role": "assistant", "content": [{"type": "text", "text": "Look"}, {"type": "image",
                                                                                     "image": _img(16, 16)}]}]
    p = load_processor(folder, chat_template="checkpoint")
    text = p.render_text(prefilled, add_generation_prompt=False, continue_final_message=True)
    assert text.endswith("Look") and text == load_processor(folder).render_text(
        prefilled, add_generation_prompt=False, continue_final_message=True)


def test_custom_template_format_is_probed():
    from qwen3vl.processing.chat_template import probe_format

    r1 = ("{% for m in messages %}{{ m.content.split('</think>')[-1] }}{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
    assert probe_format(r1) == "thinking"  # opens <think> without naming reasoning_content
    assert probe_format(CUSTOM_TEMPLATE) == "instruct"
