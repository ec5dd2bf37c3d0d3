"""GUI agent: computer_use / mobile_use tools, a Playwright browser environment, policies and the loop.

    from qwen3vl.tasks.agent import BrowserEnv, ModelPolicy, run_agent, AgentConfig
    with BrowserEnv("https://example.org") as env:
        result = run_agent("Open the first link", env, ModelPolicy(backend), AgentConfig(log_dir="run"))

Exports are lazy: Playwright is imported only when a browser starts.
"""

from __future__ import annotations

from qwen3vl._lazy import lazy_exports

_EXPORTS = {
    "computer_use_tool": "qwen3vl.tasks.agent.tools",
    "mobile_use_tool": "qwen3vl.tasks.agent.tools",
    "system_prompt": "qwen3vl.tasks.agent.tools",
    "user_prompt": "qwen3vl.tasks.agent.tools",
    "Action": "qwen3vl.tasks.agent.actions",
    "validate_call": "qwen3vl.tasks.agent.actions",
    "BrowserEnv": "qwen3vl.tasks.agent.browser",
    "find_chromium": "qwen3vl.tasks.agent.browser",
    "ModelPolicy": "qwen3vl.tasks.agent.policy",
    "ScriptedPolicy": "qwen3vl.tasks.agent.policy",
    "Observation": "qwen3vl.tasks.agent.policy",
    "run_agent": "qwen3vl.tasks.agent.loop",
    "AgentConfig": "qwen3vl.tasks.agent.loop",
    "AgentResult": "qwen3vl.tasks.agent.loop",
}


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
