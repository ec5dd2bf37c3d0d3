"""What a prompt-lookup pass costs: engine decode steps of one 2B-shaped bf16 sequence feeding 1, 1 + 5 and 1 + 10
tokens a pass (the drafts forced, and rejected by the random model, so every step still yields one token). If a
pass of 1 + K tokens costs about what a one-token pass does, each kept draft is a token for free.

    python benchmarks/bench_lookup_pass_cost.py     # needs the checkpoint bench_prompt_lookup.py writes
"""
import time, torch, qwen3vl
from qwen3vl.engine.engine import Engine, EngineConfig
from qwen3vl.engine.sampling import SamplingParams
torch.set_num_threads(2)
m = qwen3vl.load_model("/tmp/qwen3vl-bench-2b", dtype=torch.bfloat16)
ids = list(range(1000, 1064))
for k in (0, 5, 10):
    e = Engine(m, eos_token_ids=[], config=EngineConfig(kv_cache_bytes=512 * 1024**2, prompt_lookup=max(k, 1),
                                                        enable_prefix_cache=False))
    e._draft = (lambda seq, at_most, k=k: [2000 + i for i in range(k)])  # always k drafts (the model rejects them)
    for rep in range(2):
        (seq,) = e.add_request(f"r{rep}", ids, SamplingParams(temperature=0.0, max_tokens=33, ignore_eos=True))
        e.step()  # prefill
        t = time.perf_counter(); e.run_until_done(); dt = time.perf_counter() - t
        e.requests.clear()
    print(f"1 + {k} tokens a pass: {dt / 32 * 1000:.0f} ms a step (32 steps)", flush=True)
