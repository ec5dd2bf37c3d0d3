"""`qwen3vl run-batch`: OpenAI Batch API files run offline through the server's own app. Each answered line must equal
what the Python API gives for the same request, refusals keep the server's 4xx error, results come in input order,
and the file is checked (naming the line) before anything runs."""

from __future__ import annotations

import io
import json

import pytest

from qwen3vl.cli import main
from qwen3vl.llm import LLM
from qwen3vl.model.testing import write_tiny_model
from qwen3vl.serve import batch
from qwen3vl.serve.app import ServeSettings, create_app
from qwen3vl.serve.testing import image_message, png_data_uri

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), sharpen=3.0)


@pytest.fixture(scope="module")
def llm(folder):
    return LLM(folder, kv_cache_gb=0.05)


@pytest.fixture(scope="module")
def reference(folder):
    return LLM(folder, kv_cache_gb=0.05)


def _line(custom_id, url, body, method="POST"):
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


def _run(llm, lines, concurrency=4, done=()):
    app = create_app(llm, ServeSettings(["tiny"], max_queue=concurrency, responses_store=0,
                                        sampling_defaults={"max_tokens": MAX_TOKENS}))
    out = io.StringIO()
    counts = batch.run_batch(app, batch.read_requests(lines), out, concurrency, list(done), show_progress=False)
    return [json.loads(x) for x in out.getvalue().splitlines()], counts


def test_answers_equal_the_python_api_in_input_order(llm, reference):
    chats = [image_message(f"Describe picture {i}.", png_data_uri(i)) for i in range(3)]
    chats.append([{"role": "user", "content": "Count to ten."}])
    lines = [_line(f"chat-{i}", "/v1/chat/completions",
                   {"model": "tiny", "messages": m, "temperature": 0, "max_tokens": 4 + 3 * i})
             for i, m in enumerate(chats)]
    lines.insert(2, _line("cmpl", "/v1/completions", {"prompt": "The sky is", "temperature": 0}))
    lines.insert(3, _line("resp", "/v1/responses", {"input": "Say hello.", "temperature": 0, "max_output_tokens": 5}))
    lines.insert(1, _line("bad", "/v1/chat/completions", {"messages": [], "temperature": 0}))
    lines.insert(0, _line("streamed", "/v1/chat/completions",
                          {"messages": chats[3], "stream": True, "temperature": 0}))
    records, counts = _run(llm, lines)

    assert [r["custom_id"] for r in records] == [json.loads(x)["custom_id"] for x in lines]
    by_id = {r["custom_id"]: r for r in records}
    for i, m in enumerate(chats):
        r = by_id[f"chat-{i}"]
        assert r["id"].startswith("batch_req_") and r["error"] is None
        assert r["response"]["status_code"] == 200
        body = r["response"]["body"]
        assert r["response"]["request_id"].startswith("req_") and body["object"] == "chat.completion"
        want = reference.chat(m, temperature=0, max_tokens=4 + 3 * i)
        assert body["choices"][0]["message"]["content"] == want.text
        assert body["usage"]["completion_tokens"] == want.usage.completion_tokens
        assert body["usage"]["prompt_tokens"] == want.usage.prompt_tokens
    cmpl = by_id["cmpl"]["response"]["body"]
    (seq,) = reference.engine.add_request("ref", reference.tokenizer.encode("The sky is"),
                                          reference.sampling_params(temperature=0, max_tokens=MAX_TOKENS))
    reference.engine.run_until_done()  # (MAX_TOKENS: the settings' default for a body that sends none)
    assert cmpl["object"] == "text_completion"
    assert cmpl["choices"][0]["text"] == reference.tokenizer.decode(seq.output_ids)
    resp = by_id["resp"]["response"]["body"]
    want = reference.chat([{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=5)
    assert resp["object"] == "response" and resp["output"][-1]["content"][0]["text"] == want.text

    for cid, param in (("bad", "messages"), ("streamed", "stream")):
        r = by_id[cid]["response"]
        assert r["status_code"] == 400 and r["body"]["error"]["param"] == param
        assert by_id[cid]["error"] == {"code": "invalid_request_error", "message": r["body"]["error"]["message"]}
    assert (counts.total, counts.ok, counts.failed, counts.statuses) == (8, 6, 2, {200: 6, 400: 2})
    assert counts.completion_tokens == sum(
        r["response"]["body"]["usage"].get("completion_tokens", r["response"]["body"]["usage"].get("output_tokens"))
        for r in records if r["response"]["status_code"] == 200)
    assert not llm.engine.has_work()  # nothing left running


def test_one_at_a_time_gives_the_same_answers(llm):
    lines = [_line(str(i), "/v1/chat/completions",
                   {"messages": [{"role": "user", "content": f"Question {i}?"}], "temperature": 0})
             for i in range(5)]
    together, _ = _run(llm, lines, concurrency=5)
    alone, _ = _run(llm, lines, concurrency=1)
    text = lambda rs: [r["response"]["body"]["choices"][0]["message"]["content"] for r in rs]  # noqa: E731
    assert text(together) == text(alone)


def test_resume_keeps_answered_lines_and_runs_the_rest(llm, tmp_path):
    lines = [_line(str(i), "/v1/chat/completions",
                   {"messages": [{"role": "user", "content": f"Item {i}."}], "temperature": 0})
             for i in range(4)]
    requests = batch.read_requests(lines)
    first, _ = _run(llm, lines[:2])
    failed = {**first[1], "response": {**first[1]["response"], "status_code": 500}}  # a failure is run again
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps(first[0]) + "\n" + json.dumps(failed) + "\n")

    with pytest.raises(batch.BatchFileError, match="--resume"):
        batch.check_output(str(out), "-", requests, resume=False, overwrite=False)
    done = batch.check_output(str(out), "-", requests, resume=True, overwrite=False)
    assert [d["id"] for d in done] == [first[0]["id"]]
    assert out.read_text().count("\n") == 2  # nothing written before the model is ready
    app = create_app(llm, ServeSettings(["tiny"], sampling_defaults={"max_tokens": MAX_TOKENS}))
    with batch.open_output(str(out), done, resume=True) as stream:
        counts = batch.run_batch(app, requests, stream, 2, done, show_progress=False)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["custom_id"] for r in records] == ["0", "1", "2", "3"]
    assert records[0] == first[0]  # kept as it was
    assert records[1]["response"]["status_code"] == 200
    assert (counts.skipped, counts.ok) == (1, 3)

    # a last line cut off mid-write is run again; a torn line elsewhere, or request lines, are refused
    text = out.read_text()
    out.write_text(text[:-40])
    assert [d["custom_id"] for d in batch.check_output(str(out), "-", requests, True, False)] == ["0", "1", "2"]
    out.write_text(text[:-40] + "\n" + text)
    with pytest.raises(batch.BatchFileError, match="line 4: not a batch result line"):
        batch.check_output(str(out), "-", requests, True, False)
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(batch.BatchFileError, match="line 1: not a batch result line"):
        batch.check_output(str(out), "-", requests, True, False)
    with pytest.raises(batch.BatchFileError, match="is the input file"):
        batch.check_output(str(out), str(out), requests, True, False)

    out.write_text(text)
    other = batch.read_requests([_line("x", "/v1/completions", {"prompt": "a"})])
    with pytest.raises(batch.BatchFileError, match="custom_id '0'.*another batch"):
        batch.check_output(str(out), "-", other, resume=True, overwrite=False)
    assert batch.check_output(str(out), "-", other, resume=False, overwrite=True) == []
    assert out.read_text() == text  # still: replaced only when opened
    batch.open_output(str(out), [], resume=False).close()
    assert out.read_text() == ""


def test_a_stopped_run_keeps_what_finished_behind_a_slow_line():
    import asyncio

    async def app(scope, receive, send):  # line 0 never finishes; the others at once
        body = json.loads((await receive())["body"])
        if body["n"] == 0:
            await asyncio.sleep(3600)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps({"id": str(body["n"])}).encode()})

    requests = batch.read_requests([_line(str(i), "/v1/completions", {"n": i}) for i in range(4)])
    written = []

    async def main():
        task = asyncio.ensure_future(batch.run_requests(app, requests, written.append, 4, batch.BatchCounts()))
        await asyncio.sleep(0.2)
        assert written == []  # (in input order: all wait for line 0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [r["custom_id"] for r in written] == ["1", "2", "3"]


@pytest.mark.parametrize("text, match", [
    ("{nope", "line 2: not JSON"),
    ("[1, 2]", "line 2: expected a JSON object"),
    (json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/completions", "body": {}, "extra": 1}),
     "line 2: unknown field.*'extra'"),
    (json.dumps({"custom_id": "b", "url": "/v1/completions", "body": {}}), "line 2: missing 'method'"),
    (_line("", "/v1/completions", {}), "line 2: custom_id must be a non-empty string"),
    (_line("a", "/v1/completions", {}), "line 2: custom_id 'a' is already used on line 1"),
    (_line("b", "/v1/completions", {}, method="GET"), "line 2: method must be 'POST'"),
    (_line("b", "/v1/embeddings", {}), "line 2: url '/v1/embeddings' is not supported"),
    (_line("b", "/v1/completions", "prompt"), "line 2: body must be a JSON object"),
])
def test_bad_lines_are_named(text, match):
    with pytest.raises(batch.BatchFileError, match=match):
        batch.read_requests([_line("a", "/v1/completions", {"prompt": "x"}), text], "in.jsonl")


def test_empty_file_is_refused():
    with pytest.raises(batch.BatchFileError, match="holds no requests"):
        batch.read_requests(["", "  \n"], "in.jsonl")


def test_command_line(folder, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(_line("q", "/v1/chat/completions",
                         {"messages": [{"role": "user", "content": "Hi."}], "temperature": 0}) + "\n")
    out = tmp_path / "out.jsonl"
    args = ["run-batch", "-i", str(src), "-o", str(out), "--model", str(folder), "--kv-cache-gb", "0.05",
            "--max-tokens", "3", "--no-progress"]
    assert main(args) == 0
    (record,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert record["custom_id"] == "q" and record["response"]["status_code"] == 200
    assert record["response"]["body"]["usage"]["completion_tokens"] <= 3
    assert "1 requests: 1 ok, 0 failed" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="exists and is not empty"):  # refused before the model loads
        main(args)
    kept = out.read_text()
    for flag in ("--resume", "--overwrite"):  # a model that cannot load leaves the earlier output as it was
        with pytest.raises(SystemExit):
            main(["run-batch", "-i", str(src), "-o", str(out), "--model", str(tmp_path / "missing"), flag])
        assert out.read_text() == kept
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_line("q", "/v1/chat/completions", {}) + "\nnot json\n")
    with pytest.raises(SystemExit, match="bad.jsonl, line 2: not JSON"):
        main(["run-batch", "-i", str(bad), "-o", str(tmp_path / "o2.jsonl"), "--model", "/does/not/exist"])
