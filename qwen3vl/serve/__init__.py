"""OpenAI-compatible serving (docs/SERVING.md): `create_app(llm, ServeSettings(...))` for an ASGI app, `qwen3vl serve`
on the command line. `schemas` (request bodies), `media` (media policy), `prompts` (requests -> engine jobs), `jobs`
(what crosses threads), `loop` (the engine thread), `outputs` (sequences -> choices), `responses` (OpenAI JSON),
`metrics`, `transport` (SSE, guard), `app` (routes), `cli`; `testing` and `loadtest` for tests and benchmarks.
Needs the `serve` extra."""
