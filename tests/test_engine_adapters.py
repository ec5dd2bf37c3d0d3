"""LoRA adapters chosen per request (engine/adapters.py): a request with `adapter=NAME` gets what the model with that
adapter merged gives (same tokens, logprobs within 1e-4 in float32), mixed in one batch with base-model requests and
requests of another adapter; the prefix cache never hands one adapter's keys and values to another; the server
routes `model: NAME` to the adapter and lists it, and loads and unloads adapters at run time (vLLM's routes);
an adapter removed while a request uses it serves that request to the end; adapters that cannot be applied per
request are refused by name."""

from __future__ import annotations

import openai
import pytest
import torch

from qwen3vl.llm import LLM
from qwen3vl.serve.app import ServeSettings, create_app
from qwen3vl.serve.testing import ServerThread, image_message, png_data_uri
from qwen3vl.train.testing import write_tiny_base
from qwen3vl.weights.adapters import AdapterError
from reference import random_lora

SAMPLING = dict(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=0)
CONVS = [
    [{"role": "user", "content": "Tell me about the sea."}],
    image_message("What is in the picture?", png_data_uri(1)),
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    base = write_tiny_base(root / "base", seed=5)
    a = random_lora(base, root / "a", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])
    b = random_lora(base, root / "b", 2, r=2, lora_alpha=4, target_modules=["o_proj", "down_proj", "gate_proj"],
                 use_rslora=True)
    vision = random_lora(base, root / "vision", 3, r=2, lora_alpha=4, target_modules=["qkv"])
    return {"base": base, "a": a, "b": b, "vision": vision}


@pytest.fixture(scope="module")
def served(folders):
    return LLM(folders["base"], device="cpu", kv_cache_gb=0.05, lora_modules={"a": folders["a"], "b": folders["b"]})


def _run(llm: LLM, jobs: list[tuple[list, str | None]]) -> list[tuple[list[int], list[float]]]:
    """Submit every (conversation, adapter) at once, step until all finish: (token ids, logprobs) per job."""
    submitted = [llm.submit(conv, adapter=adapter, **SAMPLING)[1][0] for conv, adapter in jobs]
    while any(s.finish_reason is None for s in submitted):
        llm.engine.step()
    return [(list(s.output_ids), [lp for lp, _ in s.logprobs]) for s in submitted]


def _merged(folders, name):
    return LLM(folders["base"], device="cpu", kv_cache_gb=0.05, lora=None if name is None else folders[name])


def _same(got, want):
    assert got[0] == want[0]
    torch.testing.assert_close(torch.tensor(got[1]), torch.tensor(want[1]), atol=1e-4, rtol=0)


def test_a_mixed_batch_gives_each_request_its_merged_models_answer(folders, served):
    jobs = [(conv, adapter) for conv in CONVS for adapter in (None, "a", "b")]
    got = _run(served, jobs)
    want = {}
    for name in (None, "a", "b"):
        want[name] = _run(_merged(folders, name), [(conv, None) for conv in CONVS])
    for k, (conv, adapter) in enumerate(jobs):
        _same(got[k], want[adapter][CONVS.index(conv)])
    # the adapters change the answers (else this test could not tell them apart)
    assert len({tuple(want[n][0][0]) for n in want}) == 3


def test_the_prefix_cache_keeps_adapters_apart(folders, served):
    conv = [{"role": "user", "content": "A prompt no other test sends, long enough to fill a few cache blocks."}]
    base_answer = _run(served, [(conv, None)])[0]  # its blocks stay cached after it finishes
    hits = served.engine.blocks.hits
    a_answer = _run(served, [(conv, "a")])[0]  # the same prompt under adapter a
    assert served.engine.blocks.hits == hits  # nothing of the base model's cache was reused
    _same(a_answer, _run(_merged(folders, "a"), [(conv, None)])[0])
    assert a_answer[0] != base_answer[0]
    again = _run(served, [(conv, "a")])[0]  # the same adapter again: its own blocks are reused
    assert served.engine.blocks.hits > hits
    _same(again, a_answer)


def test_chat_api_takes_the_adapter_by_name(folders, served):
    got = served.chat(CONVS[0], adapter="b", max_tokens=6, temperature=0.0, ignore_eos=True)
    want = _merged(folders, "b").chat(CONVS[0], max_tokens=6, temperature=0.0, ignore_eos=True)
    assert got.token_ids == want.token_ids
    assert sorted(served.loras) == ["a", "b"]


def test_adapters_that_cannot_be_applied_per_request_are_refused(folders, tmp_path):
    llm = LLM(folders["base"], device="cpu", kv_cache_gb=0.05)
    with pytest.raises(AdapterError, match=r"adapts model\.visual\..*merge this adapter at load"):
        llm.add_lora("v", folders["vision"])
    assert llm.loras == []  # nothing half-loaded
    llm.add_lora("a", folders["a"])
    with pytest.raises(AdapterError, match="already loaded"):
        llm.add_lora("a", folders["b"])
    with pytest.raises(ValueError, match=r"no LoRA adapter named 'c' is loaded \(loaded: a\)"):
        llm.chat(CONVS[0], adapter="c", max_tokens=2)
    llm.remove_lora("a")
    with pytest.raises(ValueError, match="no LoRA adapter named 'a'"):
        llm.chat(CONVS[0], adapter="a", max_tokens=2)
    # with the adapter gone, the base model answers as before and no hook is left behind
    base = _merged(folders, None)
    assert llm.chat(CONVS[0], max_tokens=4, temperature=0.0).token_ids == \
        base.chat(CONVS[0], max_tokens=4, temperature=0.0).token_ids
    assert not any(m._forward_hooks for m in llm.model.modules())


def test_the_server_routes_model_names_to_adapters(folders, served):
    with ServerThread(create_app(served, ServeSettings(["tiny"]))) as server:
        client = openai.OpenAI(api_key="unused", base_url=server.url + "/v1", max_retries=0, timeout=60)
        cards = {m.id: m for m in client.models.list().data}
        assert set(cards) == {"tiny", "a", "b"}
        assert cards["a"].model_dump()["parent"] == "tiny"
        answers = {}
        for model in ("tiny", "a", "b"):
            r = client.chat.completions.create(model=model, messages=CONVS[0], max_tokens=6, temperature=0.0,
                                               extra_body={"ignore_eos": True})
            assert r.model == model
            answers[model] = r.choices[0].message.content
        for model, name in (("tiny", None), ("a", "a"), ("b", "b")):
            want = _merged(folders, name).chat(CONVS[0], max_tokens=6, temperature=0.0, ignore_eos=True)
            assert answers[model] == want.text
        with pytest.raises(openai.NotFoundError, match="serves tiny, a, b"):
            client.chat.completions.create(model="c", messages=CONVS[0], max_tokens=2)


def test_serve_flag_lora_modules(folders):
    import argparse

    from qwen3vl.commands import build_llm, lora_modules_arg
    from qwen3vl.serve.cli import add_serve_parser, settings_from_args

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(folders["base"]), "--device", "cpu", "--kv-cache-gb", "0.05",
                              "--lora-modules", f"a={folders['a']}", f"b={folders['b']}"])
    assert build_llm(args).loras == ["a", "b"]
    assert settings_from_args(args).allow_runtime_lora is False
    assert settings_from_args(parser.parse_args(["serve", "--allow-runtime-lora"])).allow_runtime_lora is True
    for bad, message in ((["a"], "NAME=ADAPTER"), (["=x"], "NAME=ADAPTER"), (["a=x", "a=y"], "names 'a' twice")):
        with pytest.raises(SystemExit, match=message):
            lora_modules_arg(bad)
    args.lora_modules = [f"v={folders['vision']}"]
    with pytest.raises(SystemExit, match="merge this adapter at load"):
        build_llm(args)
    llm = LLM(folders["base"], device="cpu", kv_cache_gb=0.05, lora_modules={"tiny": folders["a"]})
    with pytest.raises(ValueError, match="also served model names"):
        create_app(llm, ServeSettings(["tiny"]))


def test_an_adapter_loaded_again_under_its_name_never_meets_the_old_ones_cache(folders):
    llm = LLM(folders["base"], device="cpu", kv_cache_gb=0.05, lora_modules={"x": folders["a"]})
    conv = [{"role": "user", "content": "Another prompt of its own, to be cached under the first load of x."}]
    first = _run(llm, [(conv, "x")])[0]
    llm.remove_lora("x")
    llm.add_lora("x", folders["b"])
    hits = llm.engine.blocks.hits
    second = _run(llm, [(conv, "x")])[0]
    assert llm.engine.blocks.hits == hits
    _same(second, _run(_merged(folders, "b"), [(conv, None)])[0])
    assert second[0] != first[0]


def test_chunked_prefill_and_several_sequences_per_request(folders):
    llm = LLM(folders["base"], device="cpu", kv_cache_gb=0.05, max_batch_tokens=16, lora_modules={"a": folders["a"]})
    merged = LLM(folders["base"], device="cpu", kv_cache_gb=0.05, max_batch_tokens=16, lora=folders["a"])
    kw = dict(max_tokens=5, temperature=0.0, ignore_eos=True, n=2)
    got = llm.chat_batch([CONVS[1], CONVS[0]], adapter="a", **kw)
    want = merged.chat_batch([CONVS[1], CONVS[0]], **kw)
    assert [[c.token_ids for c in r.choices] for r in got] == [[c.token_ids for c in r.choices] for r in want]


@pytest.mark.parametrize("config, message", [
    # peft saves the base embedding / head next to their adapters: whole tensors, refused first
    (dict(target_modules=["embed_tokens"]), r"whole tensors \(model\.language_model\.embed_tokens\.weight\)"),
    (dict(target_modules=["lm_head"]), r"whole tensors \(lm_head\.weight\)"),
    (dict(target_modules=["q_proj"], modules_to_save=["merger"]), "carries whole tensors"),
    (dict(target_modules=["q_proj"], lora_bias=True), "lora_bias"),
])
def test_other_adapters_are_refused_by_name(folders, tmp_path, config, message):
    from qwen3vl.weights.adapters import read_adapter

    folder = random_lora(folders["base"], tmp_path / "ad", 4, r=2, lora_alpha=4, **config)
    llm = LLM(folders["base"], device="cpu", kv_cache_gb=0.05)
    with pytest.raises(AdapterError, match=message):
        llm.add_lora("n", folder)
    if "embed_tokens" in config["target_modules"] or "lm_head" in config["target_modules"]:
        pairs_only = read_adapter(folder)
        pairs_only.tensors = {}  # the LoRA pairs alone are refused too
        with pytest.raises(AdapterError, match="only the language model's decoder layers can be adapted per request"):
            llm.add_lora("n", pairs_only)
    assert llm.loras == [] and not any(m._forward_hooks for m in llm.model.modules())


def test_removing_an_adapter_that_a_running_request_uses(folders):
    llm = LLM(folders["base"], device="cpu", kv_cache_gb=0.05, lora_modules={"a": folders["a"], "b": folders["b"]})
    conv = CONVS[0]
    _, seqs, _ = llm.submit(conv, adapter="a", **SAMPLING)
    llm.engine.step()  # prefill and the first token, with adapter a
    hooked = {n for n, m in llm.model.named_modules() if m._forward_hooks}
    llm.remove_lora("a")
    assert llm.loras == ["b"]
    with pytest.raises(ValueError, match="no LoRA adapter named 'a'"):
        llm.submit(conv, adapter="a", max_tokens=2)  # the name is gone at once
    assert {n for n, m in llm.model.named_modules() if m._forward_hooks} == hooked  # the weights are not
    while seqs[0].finish_reason is None:
        llm.engine.step()
    # the running request finished as the model with adapter a merged answers
    got = (list(seqs[0].output_ids), [lp for lp, _ in seqs[0].logprobs])
    _same(got, _run(_merged(folders, "a"), [(conv, None)])[0])
    # then a's weights and the hooks only a used are gone; b's stay and still work
    assert llm.engine.adapters.retiring == set()
    left = {n for n, m in llm.model.named_modules() if m._forward_hooks}
    assert left == {n for n, m in llm.model.named_modules()
                    if n.endswith(("o_proj", "down_proj", "gate_proj")) and n.startswith("model.language_model")}
    _same(_run(llm, [(conv, "b")])[0], _run(_merged(folders, "b"), [(conv, None)])[0])
    with pytest.raises(AdapterError, match="no adapter named 'a' is loaded"):
        llm.remove_lora("a")
    # removed while running, then aborted: freed at the abort
    rid, seqs, _ = llm.submit(conv, adapter="b", **SAMPLING)
    llm.engine.step()
    llm.remove_lora("b")
    assert llm.engine.adapters.retiring and any(m._forward_hooks for m in llm.model.modules())
    llm.engine.abort(rid)
    assert not llm.engine.adapters.retiring and not any(m._forward_hooks for m in llm.model.modules())


def test_the_server_loads_and_unloads_adapters_at_run_time(folders):
    import httpx

    llm = LLM(folders["base"], device="cpu", kv_cache_gb=0.05)
    off = LLM(folders["base"], device="cpu", kv_cache_gb=0.05)
    with ServerThread(create_app(off, ServeSettings(["tiny"]))) as server:
        r = httpx.post(server.url + "/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(folders["a"])})
        assert r.status_code == 404 and "--allow-runtime-lora" in r.json()["error"]["message"]
    assert off.loras == []
    adapters, off.engine.adapters = off.engine.adapters, None  # as under tensor parallelism
    with pytest.raises(ValueError, match="not supported with tensor parallelism"):
        create_app(off, ServeSettings(["tiny"], allow_runtime_lora=True))
    off.engine.adapters = adapters
    with ServerThread(create_app(llm, ServeSettings(["tiny"], allow_runtime_lora=True))) as server:
        client = openai.OpenAI(api_key="unused", base_url=server.url + "/v1", max_retries=0, timeout=60)
        load, unload = server.url + "/v1/load_lora_adapter", server.url + "/v1/unload_lora_adapter"
        r = httpx.post(load, json={"lora_name": "a", "lora_path": str(folders["a"])})
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'a' added successfully."
        assert {m.id for m in client.models.list().data} == {"tiny", "a"}
        got = client.chat.completions.create(model="a", messages=CONVS[0], max_tokens=6, temperature=0.0,
                                             extra_body={"ignore_eos": True})
        want = _merged(folders, "a").chat(CONVS[0], max_tokens=6, temperature=0.0, ignore_eos=True)
        assert got.choices[0].message.content == want.text
        # refusals, each naming what is wrong; none of them changes what is served
        for body, status, message in (
                ({"lora_name": "a", "lora_path": str(folders["b"])}, 400, "'a' is already served"),
                ({"lora_name": "tiny", "lora_path": str(folders["b"])}, 400, "'tiny' is already served"),
                ({"lora_name": "v", "lora_path": str(folders["vision"])}, 400, "merge this adapter at load"),
                ({"lora_name": "x", "lora_path": str(folders["base"] / "nowhere")}, 400, "LoRA adapter 'x'"),
                ({"lora_name": "x"}, 400, "lora_path"),
                ({"lora_name": "", "lora_path": str(folders["b"])}, 400, "lora_name")):
            r = httpx.post(load, json=body)
            assert r.status_code == status and message in r.json()["error"]["message"], (body, r.text)
        r = httpx.post(unload, json={"lora_name": "b"})
        assert r.status_code == 404 and "no adapter named 'b'" in r.json()["error"]["message"]
        assert {m.id for m in client.models.list().data} == {"tiny", "a"}
        r = httpx.post(unload, json={"lora_name": "a"})
        assert r.status_code == 200 and r.text == "Success: LoRA adapter 'a' removed successfully."
        with pytest.raises(openai.NotFoundError, match="serves tiny"):
            client.chat.completions.create(model="a", messages=CONVS[0], max_tokens=2)
        assert not any(m._forward_hooks for m in llm.model.modules())
        # the same name again with other weights: served from the new load
        assert httpx.post(load, json={"lora_name": "a", "lora_path": str(folders["b"])}).status_code == 200
        got = client.chat.completions.create(model="a", messages=CONVS[0], max_tokens=6, temperature=0.0,
                                             extra_body={"ignore_eos": True})
        want = _merged(folders, "b").chat(CONVS[0], max_tokens=6, temperature=0.0, ignore_eos=True)
        assert got.choices[0].message.content == want.text
