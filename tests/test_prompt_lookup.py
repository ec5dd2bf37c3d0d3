"""Prompt-lookup decoding (engine/speculative.py): greedy requests carry n-gram drafts, and what they generate must
be exactly what plain greedy decoding generates (tokens, finish reasons, logprobs), with drafts both kept and
rejected along the way; sampled requests are never drafted."""

from __future__ import annotations

import pytest

from qwen3vl.engine.speculative import check_lookup, ngram_draft
from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve.testing import image_message, png_data_uri


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), sharpen=3.0)


@pytest.fixture(scope="module")
def plain(folder):
    return LLM(folder, kv_cache_gb=0.05)


@pytest.fixture(scope="module")
def lookup(folder):
    return LLM(folder, kv_cache_gb=0.05, prompt_lookup=4)


def _run(llm: LLM, requests: list[tuple[list, dict]]) -> list[list[tuple]]:
    """All requests submitted together (so drafted and plain sequences share steps); per request, per sample:
    (output ids, finish reason, logprobs)."""
    submitted = [llm.submit(messages, **sampling) for messages, sampling in requests]
    llm.engine.run_until_done()
    out = []
    for rid, seqs, _ in submitted:
        out.append([(list(s.output_ids), s.finish_reason, list(s.logprobs)) for s in seqs])
        llm.engine.requests.pop(rid, None)
    return out


REPEAT = "one two three four five six seven eight; one two three four five six seven eight; one two three"
REQUESTS = [
    ([{"role": "user", "content": REPEAT}], {"temperature": 0, "max_tokens": 40}),
    (image_message("Describe it, then describe it again.", png_data_uri(2)), {"temperature": 0, "max_tokens": 30}),
    ([{"role": "user", "content": "Count: 1 2 3 1 2 3 1 2"}], {"temperature": 0, "max_tokens": 25, "logprobs": 3}),
    ([{"role": "user", "content": REPEAT}], {"temperature": 0, "max_tokens": 30, "repetition_penalty": 1.3}),
    ([{"role": "user", "content": "Hello there."}], {"temperature": 0, "max_tokens": 7}),
    ([{"role": "user", "content": REPEAT}], {"temperature": 0, "max_tokens": 30, "n": 2, "min_tokens": 5}),
    ([{"role": "user", "content": "Give JSON."}], {"temperature": 0, "max_tokens": 30, "json_mode": True}),
    ([{"role": "user", "content": REPEAT}], {"temperature": 0.8, "seed": 3, "max_tokens": 20}),
]


def test_the_same_tokens_as_plain_greedy_decoding(plain, lookup):
    want = _run(plain, REQUESTS)
    before = dict(lookup.engine.stats)
    got = _run(lookup, REQUESTS)
    drafted = lookup.engine.stats["draft_tokens"] - before["draft_tokens"]
    accepted = lookup.engine.stats["accepted_draft_tokens"] - before["accepted_draft_tokens"]
    assert 0 < accepted < drafted  # drafts were both kept and thrown away
    steps = lookup.engine.stats["steps"] - before["steps"]
    assert steps < plain.engine.stats["steps"]  # (the plain LLM ran only this batch)
    for i, (w, g) in enumerate(zip(want, got)):
        assert [s[:2] for s in g] == [s[:2] for s in w], i
        for (_, _, lw), (_, _, lg) in zip(w, g):  # logprobs from a multi-token pass: equal up to rounding
            assert len(lw) == len(lg)
            for (a, top_a), (b, top_b) in zip(lw, lg):
                assert a == pytest.approx(b, abs=1e-4)
                assert [t for t, _ in top_a or []] == [t for t, _ in top_b or []]


def test_sampled_requests_are_not_drafted(lookup):
    before = lookup.engine.stats["draft_tokens"]
    _run(lookup, [([{"role": "user", "content": REPEAT}], {"temperature": 0.7, "seed": 1, "max_tokens": 30})])
    assert lookup.engine.stats["draft_tokens"] == before


def test_stop_strings_and_streaming(plain, lookup):
    messages = [{"role": "user", "content": REPEAT}]
    text = plain.chat(messages, temperature=0, max_tokens=40).text
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert stop.strip()
    for kw in ({}, {"stop": [stop]}):
        want = plain.chat(messages, temperature=0, max_tokens=40, **kw)
        got = lookup.chat(messages, temperature=0, max_tokens=40, **kw)
        assert (got.text, got.finish_reason, got.token_ids) == (want.text, want.finish_reason, want.token_ids)
        deltas = list(lookup.chat_stream(messages, temperature=0, max_tokens=40, **kw))
        assert "".join(d.text for d in deltas) == want.text
        assert [t for d in deltas for t in d.token_ids] == want.token_ids


def test_a_small_cache_still_gives_the_same_tokens(folder, plain):
    tight = LLM(folder, num_blocks=12, block_size=8, prompt_lookup=6)  # 96 slots for 4 sequences
    requests = [([{"role": "user", "content": f"{i}: " + REPEAT[:40]}], {"temperature": 0, "max_tokens": 24})
                for i in range(4)]
    assert _run(tight, requests) == _run(plain, requests)
    assert tight.engine.blocks.num_used == 0


def test_ngram_draft():
    assert ngram_draft([1, 2, 3, 9, 1, 2, 3, 7, 7, 1, 2, 3], 2) == [7, 7]  # the latest occurrence
    assert ngram_draft([5, 1, 2, 8, 4, 7, 2], 3, max_n=2) == [8, 4, 7]  # no 2-gram: the 1-gram "2"
    assert ngram_draft([1, 2, 3, 4, 2, 3], 5) == [4, 2, 3]  # stops at the end
    assert ngram_draft([4, 5, 6], 3) == []
    assert ngram_draft([4, 5, 4, 5], 0) == []
    assert ngram_draft([3, 4, 9, 4, 3, 4], 2, min_n=2, max_n=2) == [9, 4]
    assert ngram_draft([9, 4, 8, 3, 4], 2, min_n=2) == []  # no 2-gram repeats; 1-grams not looked up
    assert ngram_draft([7], 3) == []
    for bad in ((-1, 1, 3), (2, 0, 3), (2, 4, 3)):
        with pytest.raises(ValueError, match="prompt"):
            check_lookup(*bad)
    check_lookup(0, 0, 0)  # off: the sizes do not matter


def test_kept_drafts_are_not_computed_again(lookup):
    """After each step only the newest token waits to be computed: a kept draft's keys and values stand."""
    rid, (seq,), _ = lookup.submit(*REQUESTS[0][:1], **REQUESTS[0][1])
    kept = 0
    while seq.finish_reason is None:
        before = lookup.engine.stats["accepted_draft_tokens"]
        lookup.engine.step()
        kept += lookup.engine.stats["accepted_draft_tokens"] - before
        if seq.finish_reason is None:
            assert seq.num_tokens - seq.num_computed == 1
    lookup.engine.requests.pop(rid, None)
    assert kept > 0


def test_an_int8_kv_cache_gives_the_same_tokens(folder):
    plain = LLM(folder, kv_cache_gb=0.05, kv_cache_dtype="int8")
    lookup = LLM(folder, kv_cache_gb=0.05, kv_cache_dtype="int8", prompt_lookup=4)
    want = [[s[:2] for s in r] for r in _run(plain, REQUESTS[:4])]
    assert [[s[:2] for s in r] for r in _run(lookup, REQUESTS[:4])] == want
    assert lookup.engine.stats["accepted_draft_tokens"] > 0


def test_command_line(folder, capsys):
    from qwen3vl.cli import main

    args = ["run", "--model", str(folder), "--kv-cache-gb", "0.05", "--temperature", "0", "--max-tokens", "30", REPEAT]
    assert main(args) == 0
    want = capsys.readouterr().out
    assert main(args + ["--prompt-lookup", "5", "--prompt-lookup-max", "2"]) == 0
    assert capsys.readouterr().out == want and want.strip()
    with pytest.raises(SystemExit, match="--prompt-lookup-min"):
        main(args + ["--prompt-lookup", "5", "--prompt-lookup-min", "4"])


def test_the_server_answers_the_same(folder):
    """Through the server's app (run in-process by run-batch): the same answers, and the counters in /metrics."""
    import io
    import json

    from qwen3vl.serve import batch
    from qwen3vl.serve.app import ServeSettings, create_app
    from qwen3vl.serve.metrics import Metrics

    llm = LLM(folder, kv_cache_gb=0.05, prompt_lookup=4)
    bodies = [{"messages": m, "temperature": 0, "max_tokens": 30, "logprobs": True, "top_logprobs": 2}
              for m, _ in REQUESTS[:3]]
    lines = [json.dumps({"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions", "body": b})
             for i, b in enumerate(bodies)]
    answers = {}
    for name, model in (("plain", LLM(folder, kv_cache_gb=0.05)), ("lookup", llm)):
        out = io.StringIO()
        app = create_app(model, ServeSettings(["tiny"]))
        batch.run_batch(app, batch.read_requests(lines), out, 3, show_progress=False)
        answers[name] = [json.loads(x)["response"]["body"]["choices"][0] for x in out.getvalue().splitlines()]
    for want, got in zip(answers["plain"], answers["lookup"]):
        assert got["message"] == want["message"] and got["finish_reason"] == want["finish_reason"]
        lw, lg = want["logprobs"]["content"], got["logprobs"]["content"]
        assert [t["token"] for t in lg] == [t["token"] for t in lw] and lw
        assert [t["logprob"] for t in lg] == pytest.approx([t["logprob"] for t in lw], abs=1e-4)
    stats = app.state.engine_loop._snapshot()
    assert 0 < stats["accepted_draft_tokens"] < stats["draft_tokens"]
    text = Metrics().render(stats, 0)
    assert f"qwen3vl_spec_decode_accepted_tokens_total {stats['accepted_draft_tokens']}" in text


def test_drafts_take_only_the_budget_others_leave(folder, plain):
    """With a step budget of 8 tokens and up to 7 drafts, every decoding sequence still gets its token each step, and a prompt in
    prefill its share, before any draft (drafts once starved the later sequences of a step)."""
    llm = LLM(folder, kv_cache_gb=0.05, prompt_lookup=7, max_batch_tokens=8)
    scheduler = llm.engine.scheduler
    real = scheduler.schedule
    seen = {"steps": 0, "drafted": 0}

    def schedule():
        decoding = [s for s in scheduler.running if s.num_tokens - s.num_computed == 1]
        prefill = [s for s in scheduler.running if s.num_tokens - s.num_computed > 1]
        chunks = real()
        got = {c.seq.seq_id for c in chunks}
        assert all(s.seq_id in got for s in decoding)
        if len(decoding) < 8 and prefill:
            assert prefill[0].seq_id in got
        seen["steps"] += 1
        seen["drafted"] += any(c.draft for c in chunks) and len(decoding) > 1
        return chunks

    scheduler.schedule = schedule
    requests = [([{"role": "user", "content": f"{i} " + REPEAT}], {"temperature": 0, "max_tokens": 30})
                for i in range(4)]
    assert [[s[:2] for s in r] for r in _run(llm, requests)] == [[s[:2] for s in r] for r in _run(plain, requests)]
    assert seen["drafted"] > 0


def test_ngram_draft_equals_a_brute_force_search():
    import numpy as np

    from qwen3vl.engine.speculative import TokenBuffer

    def brute(tokens, k, min_n, max_n):  # every window compared, the latest match of the longest n
        for n in range(max_n, min_n - 1, -1):
            starts = [s for s in range(len(tokens) - n) if tokens[s:s + n] == tokens[len(tokens) - n:]]
            if starts and k > 0:
                return tokens[starts[-1] + n:starts[-1] + n + k]
        return []

    rng = np.random.default_rng(0)
    for _ in range(2000):
        tokens = rng.integers(0, 4, int(rng.integers(1, 30))).tolist()
        k, min_n = int(rng.integers(0, 6)), int(rng.integers(1, 3))
        max_n = min_n + int(rng.integers(0, 3))
        assert ngram_draft(tokens, k, min_n, max_n) == brute(tokens, k, min_n, max_n), (tokens, k, min_n, max_n)
    buffer, prompt, output = TokenBuffer(), [5, 6, 7], []
    for i in range(150):  # grows with the output, past its first capacities
        output.append(i % 7)
        assert buffer.view(prompt, output).tolist() == prompt + output
