"""OpenAI-compatible serving: `create_app(llm, ServeSettings(...))` for an ASGI app, `qwen3vl serve` on the command
line. `schemas` (request bodies), `prompts` (requests -> engine jobs), `loop` (the engine thread), `outputs`
(sequences -> choices), `responses` (OpenAI JSON), `metrics`, `app` (routes), `cli`. Needs the `serve` extra."""
