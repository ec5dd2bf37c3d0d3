"""End to end: our processor + our model give the reference processor + reference model's logits, on one random
checkpoint folder with a tokenizer the test builds (spec §13.2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import qwen3vl
from fixtures.processing.references import hf_processor, unpatchify, write_video
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.processing.chat_template import builtin_template


@pytest.fixture(scope="module", params=["dense", "moe"])
def setup(request, tmp_path_factory):
    from transformers import AutoModelForImageTextToText

    folder = write_tiny_model(tmp_path_factory.mktemp(request.param), kind=request.param, seed=5, sharpen=3.0)
    ref = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    ours = qwen3vl.load_model(folder)
    return folder, ref, ours, hf_processor(folder)


def _img(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_two_images(setup):
    folder, ref, ours, hf = setup
    p = qwen3vl.load_processor(folder)
    a, b = _img(100, 70, 1), _img(333, 500, 2)
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image", "image": a}, {"type": "text", "text": "and "},
                                         {"type": "image", "image": b}, {"type": "text", "text": "compare them?"}]}]
    inputs = p(msgs)
    ref_inputs = hf(text=[p.render_text(msgs)], images=[a, b], return_tensors="pt")
    assert torch.equal(inputs["input_ids"], ref_inputs["input_ids"])
    with torch.no_grad():
        got = ours(**inputs).logits
        expected = ref(**ref_inputs).logits
    assert (got - expected).abs().max().item() <= 1e-4


def test_video_and_image_in_the_transformers_5_layout(setup, tmp_path):
    from transformers.video_utils import VideoMetadata

    folder, ref, ours, hf = setup
    p = qwen3vl.load_processor(folder, video_layout="wrapped")
    video = write_video(tmp_path / "clip.mp4", 25, 10)
    msgs = [{"role": "user", "content": [{"type": "video", "video": str(video)}, {"type": "image", "image": _img(64, 64, 3)},
                                         {"type": "text", "text": "What happens?"}]}]
    prepared = p.prepare(msgs)
    inputs = p.collate([prepared])
    v = prepared.videos[0]
    meta = VideoMetadata(total_num_frames=max(v.frame_indices) + 1, fps=v.video_fps, frames_indices=list(v.frame_indices))
    ref_inputs = hf(text=[p.render_text(msgs)], images=[_img(64, 64, 3)], videos=[unpatchify(v.pixel_values, v.grid_thw)],
                    video_metadata=[meta], return_tensors="pt", do_sample_frames=False,
                    videos_kwargs=dict(do_resize=False, do_convert_rgb=False, do_rescale=False, do_normalize=False,
                                       cap_pixels_per_frame=False))
    assert torch.equal(inputs["input_ids"], ref_inputs["input_ids"])
    with torch.no_grad():
        got = ours(**inputs).logits
        expected = ref(**ref_inputs).logits
    assert (got - expected).abs().max().item() <= 1e-4


def test_llm_greedy_equals_transformers_generate(setup):
    """The whole pipeline — processor, engine, sampler — against transformers' processor + generate."""
    folder, ref, _, hf = setup
    llm = qwen3vl.LLM(folder, kv_cache_gb=0.05)
    img = _img(96, 64, 4)
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Describe."}]}]
    res = llm.chat(msgs, max_tokens=8, temperature=0, ignore_eos=True)
    ref_inputs = hf(text=[llm.processor.render_text(msgs)], images=[img], return_tensors="pt")
    with torch.no_grad():
        out = ref.generate(**ref_inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert res.token_ids == out[0, ref_inputs["input_ids"].shape[1]:].tolist()


def test_continue_final_message_equals_transformers_generate(setup):
    """A prefilled answer (`continue_final_message=True`): the prompt transformers' processor builds, and the greedy
    continuation its generate writes; the answer holds only the continuation."""
    folder, ref, _, hf = setup
    llm = qwen3vl.LLM(folder, kv_cache_gb=0.05)
    img = _img(64, 96, 5)
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Where?"}]},
            {"role": "assistant", "content": '[{"bbox_2d": ['}]
    res = llm.chat(msgs, max_tokens=6, temperature=0, ignore_eos=True, continue_final_message=True)
    text = hf.tokenizer.apply_chat_template(msgs, chat_template=builtin_template("instruct"), tokenize=False,
                                            continue_final_message=True)
    assert text.endswith('[{"bbox_2d": [') and res.prompt_token_ids == hf(
        text=[text], images=[img], return_tensors="pt")["input_ids"][0].tolist()
    ref_inputs = hf(text=[text], images=[img], return_tensors="pt")
    with torch.no_grad():
        out = ref.generate(**ref_inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert res.token_ids == out[0, ref_inputs["input_ids"].shape[1]:].tolist()
    streamed = "".join(d.text for d in llm.chat_stream(msgs, max_tokens=6, temperature=0, ignore_eos=True,
                                                        continue_final_message=True))
    assert streamed == res.text
    with pytest.raises(ValueError, match="cannot both be set"):
        llm.chat(msgs, continue_final_message=True, add_generation_prompt=True)


def test_reasoning_open_follows_the_prompt(tmp_path):
    """A Thinking model's answer starts as reasoning after the generation prompt's `<think>`, or inside a continued
    reasoning; after a continued answer (past `</think>`) it is answer; an Instruct model never reasons."""
    folder = write_tiny_model(tmp_path / "thinking", chat_template="thinking")
    llm = qwen3vl.LLM(folder, kv_cache_gb=0.05)
    user = {"role": "user", "content": "2+2?"}
    assert llm.reasoning_open(llm.prepare([user]).input_ids)
    answer = {"role": "assistant", "content": "It is", "reasoning_content": "add"}
    assert not llm.reasoning_open(llm.prepare([user, answer], continue_final_message=True).input_ids)
    thinking = {"role": "assistant", "content": "<think>\nFirst I"}
    prompt = llm.prepare([user, thinking], continue_final_message=True).input_ids
    assert llm.tokenizer.decode(prompt).endswith("First I") and llm.reasoning_open(prompt)
    assert not llm.reasoning_open(llm.prepare([user, answer], add_generation_prompt=False).input_ids)
    # a constraint on an answer that does not start in reasoning applies from its first token
    res = llm.chat([user, answer], add_generation_prompt=False, json_mode=True, max_tokens=8, temperature=0)
    assert res.text.lstrip().startswith("{") and not res.reasoning
    for bad in ({"json_mode": True}, {"regex": "[0-9]+"}, {"tool_choice": "required", "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]}):
        with pytest.raises(ValueError, match="continue_final_message cannot be combined with"):
            llm.chat([user, answer], continue_final_message=True, **bad)
