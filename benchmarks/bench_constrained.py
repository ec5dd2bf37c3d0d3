"""Cost of constrained decoding (JSON mode, JSON schemas, regexes, choices) against free decoding.

Two measurements:

1. End to end, on a trained model (the bundled demo model by default): the same grounding question answered freely,
   under a JSON schema of Qwen's grounding answer (a list of {"bbox_2d", "label"}), and in JSON mode (which forces
   an object where the model wants a list: its answer goes astray, but the per-token cost is still measured),
   greedy, several times each, and the same under a regex of that answer's exact format; then "What color is the
   circle?" freely and as a choice among seven colours; then the grounding question with a tool offered
   (tool_choice "auto"), with the lazy tool-call constraint and with it taken away (the model writes no call, so
   this is what the constraint costs while it waits); prints seconds per answer and per token. transformers has
   no constrained decoding of its own, so the comparison is with our free decoding.
2. The worst step: when none of the model's likely tokens is allowed, the sampler checks candidates down the whole
   vocabulary. This times checking every token of a Qwen-sized vocabulary (151,643 byte strings: the tokenizer's
   own plus random ones) against machine states inside a string, after a key and inside a bounded number, inside a
   regex (a date, after its year) and a choice, and inside a schema string with a `pattern`.

    python benchmarks/bench_constrained.py [--model PATH] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from qwen3vl.engine.constrain import JsonMachine
from qwen3vl.engine.regex import ChoiceMachine, RegexMachine
from qwen3vl.engine.schema import SchemaMachine

BBOX = {"type": "object", "additionalProperties": False, "required": ["bbox_2d", "label"],
        "properties": {"bbox_2d": {"type": "array", "minItems": 4, "maxItems": 4,
                                   "items": {"type": "integer", "minimum": 0, "maximum": 1000}},
                       "label": {"type": "string", "maxLength": 40}}}
BOXES = {"type": "array", "minItems": 1, "maxItems": 4, "items": BBOX}  # Qwen's grounding answer: a list of boxes
QUESTION = "Locate the red circle, output its bbox coordinates using JSON format."
# Qwen's grounding answer, exactly as the model writes it
ANSWER_REGEX = r'```json\n\[\n\t\{"bbox_2d": \[\d{1,4}, \d{1,4}, \d{1,4}, \d{1,4}\], "label": "[a-z ]+"\}\n\]\n```'
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white"]
TOOLS = [{"type": "function", "function": {"name": "click", "description": "Click a point of the screen.",
                                          "parameters": {"type": "object", "required": ["x", "y"],
                                                         "properties": {"x": {"type": "integer"},
                                                                        "y": {"type": "integer"}}}}}]
DATED = {"type": "object", "required": ["date"],
         "properties": {"date": {"type": "string", "pattern": r"^\d{4}-\d{2}$"}}}


def end_to_end(model: str | None, repeats: int) -> None:
    from qwen3vl import LLM
    from qwen3vl.commands import EXAMPLE_IMAGE, bundled_model

    llm = LLM(model or bundled_model(), kv_cache_gb=0.1)
    messages = [{"role": "user", "content": [{"type": "image", "image": str(EXAMPLE_IMAGE)},
                                             {"type": "text", "text": QUESTION}]}]
    colour = [{"role": "user", "content": [{"type": "image", "image": str(EXAMPLE_IMAGE)},
                                           {"type": "text", "text": "What color is the circle?"}]}]
    modes = {"free": (messages, {}), "json_schema": (messages, {"json_schema": BOXES}),
             "json_mode": (messages, {"json_mode": True}), "regex": (messages, {"regex": ANSWER_REGEX}),
             "colour, free": (colour, {}), "colour, choice": (colour, {"choice": COLORS}),
             "tools, auto": (messages, {"tools": TOOLS})}
    llm.chat(messages, max_tokens=40, temperature=0)  # warm-up (and the vision cache for every mode alike)
    print(f"{'mode':14} {'s/answer':>9} {'tokens':>7} {'ms/token':>9}  answer")

    def timed(name: str, msgs: list, extra: dict) -> None:
        times, tokens, text = [], 0, ""
        for _ in range(repeats):
            t = time.perf_counter()
            r = llm.chat(msgs, max_tokens=60, temperature=0, **extra)
            times.append(time.perf_counter() - t)
            tokens, text = len(r.token_ids), r.text
        per = statistics.median(times)
        print(f"{name:14} {per:9.3f} {tokens:7d} {1000 * per / max(tokens, 1):9.2f}  {text!r}")

    for name, (msgs, extra) in modes.items():
        timed(name, msgs, extra)
    llm.auto_tool_calls = lambda tools, sampling: None  # the same request with the lazy constraint taken away
    timed("tools, free", messages, {"tools": TOOLS})


def worst_step(vocab_size: int = 151_643, seed: int = 0) -> None:
    from qwen3vl.commands import bundled_model
    from qwen3vl.processing.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(bundled_model())
    own = [b for i in range(tok.vocab_size) if (b := tok.text_bytes(i))]
    rng = random.Random(seed)
    alphabet = b'abcdefghijklmnopqrstuvwxyz ABCDEFG0123456789{}[]":,.-_\n\\'
    vocab = own + [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(vocab_size - len(own))]
    plain, schema = JsonMachine(), SchemaMachine(BBOX)
    states = {
        "json_mode, in a string": (plain, plain.run(plain.start(), b'{"label": "red ci')),
        "schema, in a string": (schema, schema.run(schema.start(), b'{"label": "red ci')),
        "schema, after a key": (schema, schema.run(schema.start(), b'{"bbox_2d":')),
        "schema, in a bounded number": (schema, schema.run(schema.start(), b'{"bbox_2d": [12')),
    }
    dated, date, choice = SchemaMachine(DATED), RegexMachine(r"\d{4}-\d{2}-\d{2}"), ChoiceMachine(COLORS)
    states.update({
        "regex (a date), after 2024-": (date, date.run(date.start(), b"2024-")),
        "choice (7 colours), start": (choice, choice.start()),
        "schema pattern, in a string": (dated, dated.run(dated.start(), b'{"date": "20')),
    })
    print(f"\nchecking all {len(vocab):,} tokens of a Qwen-sized vocabulary (the sampler's fallback scan):")
    for name, (machine, state) in states.items():
        t = time.perf_counter()
        allowed = sum(machine.run(state, data) is not None for data in vocab)
        dt = time.perf_counter() - t
        print(f"  {name:28} {dt:6.2f} s  ({1e6 * dt / len(vocab):5.1f} us/token, {allowed:,} allowed)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder or hub id (default: the bundled demo model)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    end_to_end(args.model, args.repeats)
    worst_step()


if __name__ == "__main__":
    main()
