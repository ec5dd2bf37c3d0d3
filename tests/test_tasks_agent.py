"""GUI agent: tool schemas, prompts, action validation, the loop, and a real headless Chromium run.

The browser tests need the system Chromium (`apt-get install -y chromium`) and the Playwright package;
when either is missing they FAIL with the install line, they are never skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from qwen3vl.tasks.agent.actions import Action, to_viewport, validate_call
from qwen3vl.tasks.agent.loop import AgentConfig, run_agent
from qwen3vl.tasks.agent.policy import (
    ModelPolicy,
    Observation,
    ScriptedPolicy,
    parse_step,
)
from qwen3vl.tasks.agent.tools import (
    COMPUTER_ACTIONS,
    computer_use_tool,
    mobile_use_tool,
    system_prompt,
    tools_preamble,
    user_prompt,
)
from qwen3vl.tasks.backends import ScriptedBackend

PAGE = Path(__file__).parent / "fixtures" / "tasks" / "agent_form.html"


def call(args: dict, name: str = "computer_use") -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


# ---------------------------------------------------------------------------------------------- schemas

def test_tool_schemas_in_openai_function_format():
    cu = computer_use_tool()
    assert cu["type"] == "function" and cu["function"]["name"] == "computer_use"
    params = cu["function"]["parameters"]
    assert params["required"] == ["action"] and params["properties"]["action"]["enum"] == list(COMPUTER_ACTIONS)
    assert "The screen's resolution is 1000x1000." in cu["function"]["description"]
    mu = mobile_use_tool()
    assert "The screen's resolution is 999x999." in mu["function"]["description"]
    enum = mu["function"]["parameters"]["properties"]["action"]["enum"]
    assert "open" in enum and "key" in enum and "answer" not in enum
    nb = mobile_use_tool(variant="notebook")["function"]["parameters"]["properties"]["action"]["enum"]
    assert "answer" in nb and "key" not in nb


def test_system_prompt_is_the_template_preamble_plus_response_format():
    tools = [computer_use_tool()]
    pre = tools_preamble(tools)
    assert pre.startswith("# Tools\n\nYou may call one or more functions to assist with the user query.")
    listed = pre.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert json.loads(listed) == tools[0]
    assert pre.endswith('<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    assert system_prompt(tools).endswith("use action=terminate in the tool call.")


def test_user_prompt_history_format():
    text = user_prompt("Search for Musk in X.", ['I opened the "X" app.', "Tapped the\nsearch bar"])
    assert text == ("The user query: Search for Musk in X.\n"
                    "Task progress (You have done the following operation on the current device): "
                    "Step 1: I opened the X app.; Step 2: Tapped the search bar; .\n")


# ---------------------------------------------------------------------------------------------- actions

def test_validate_call_accepts_and_normalises():
    a = validate_call({"name": "computer_use", "arguments": {"action": "left_click", "coordinate": ["500", "300"]}})
    assert isinstance(a, Action) and a.args == {"coordinate": (500.0, 300.0)}
    k = validate_call({"name": "computer_use", "arguments": {"action": "key", "keys": "ctrl+a"}})
    assert k.args == {"keys": ["ctrl", "a"]} and k.notes
    t = validate_call({"name": "computer_use", "arguments": {"action": "terminate", "status": "done"}})
    assert t.args == {"status": "failure"}
    w = validate_call({"name": "mobile_use", "arguments": {"action": "wait"}})
    assert w.args == {"time": 1.0}


@pytest.mark.parametrize("arguments, name, reason", [
    ({"action": "left_click"}, "browser_use", "unknown tool"),
    ({"action": "fly"}, "computer_use", "has no action 'fly'"),
    ({"action": "mouse_move"}, "computer_use", "needs `coordinate`"),
    ({"action": "left_click", "coordinate": [1, 2, 3]}, "computer_use", "expected [x, y]"),
    ({"action": "scroll", "pixels": "lots"}, "computer_use", "needs `pixels`"),
    ({"action": "swipe", "coordinate": [1, 2]}, "mobile_use", "needs `coordinate2`"),
    ({"action": "system_button", "button": "Power"}, "mobile_use", "Back, Home, Menu, Enter"),
])
def test_validate_call_reasons(arguments, name, reason):
    out = validate_call({"name": name, "arguments": arguments})
    assert isinstance(out, str) and reason in out


def test_relative_coordinates_to_viewport():
    assert to_viewport((500, 500), 1280, 800, 1000) == (640.0, 400.0)
    assert to_viewport((1000, 1000), 1280, 800, 1000) == (1279.0, 799.0)
    assert to_viewport((-5, 999), 999, 999, 999) == (0.0, 998.0)


def test_parse_step_reads_thought_action_and_call():
    step = parse_step("Thought: The bar is on top.\nAction: \"Tap the search bar.\"\n" + call({"action": "click", "coordinate": [1, 2]}, "mobile_use"))
    assert step.thought == "The bar is on top." and step.action_text == "Tap the search bar."
    assert step.calls[0].arguments["coordinate"] == [1, 2] and step.problems == []
    assert parse_step("I am not sure.").problems == ["reply has no <tool_call>"]


# ---------------------------------------------------------------------------------------------- loop

class FakeEnv:
    def __init__(self):
        self.executed: list[Action] = []

    def screenshot(self) -> Image.Image:
        return Image.new("RGB", (64, 40), (len(self.executed) * 20, 0, 0))

    def execute(self, action: Action) -> str:
        if action.action == "middle_click":
            raise RuntimeError("no middle button here")
        self.executed.append(action)
        return f"did {action.action}"


def test_loop_survives_bad_output_and_logs_every_step(tmp_path):
    env = FakeEnv()
    policy = ScriptedPolicy([
        "I will click now.",                                       # no tool call
        "<tool_call>\n{not json at all\n</tool_call>",              # unusable JSON
        call({"action": "teleport"}),                                # unknown action
        call({"action": "middle_click", "coordinate": [1, 2]}),     # execution error
        "Action: Type the name.\n" + call({"action": "type", "text": "Ada"}),
        call({"action": "answer", "text": "Ada"}),
        call({"action": "terminate", "status": "success"}),
    ])
    res = run_agent("fill the form", env, policy, AgentConfig(log_dir=str(tmp_path), max_invalid=4))
    assert res.status == "success" and res.answer == "Ada" and len(res.steps) == 7
    assert [a.action for a in env.executed] == ["type"]
    errors = [s.error for s in res.steps]
    assert "no usable tool call" in errors[0] and "not JSON" in errors[1]
    assert "has no action 'teleport'" in errors[2] and "no middle button" in errors[3]
    # the history told the model about its mistakes and kept the Action sentence
    last_history = policy.seen[-1].history
    assert last_history[0].startswith("(the reply had no valid tool call")
    assert "Type the name." in last_history
    lines = (tmp_path / "actions.jsonl").read_text().splitlines()
    assert len(lines) == 7
    first = json.loads(lines[0])
    assert first["screenshot"] == "step_000.png" and first["task"] == "fill the form"
    assert (tmp_path / "step_006.png").is_file() and (tmp_path / "final.png").is_file()


def test_loop_stops_after_repeated_invalid_output():
    res = run_agent("t", FakeEnv(), ScriptedPolicy(["no call"] * 10), AgentConfig(max_invalid=3))
    assert res.status == "invalid_output" and len(res.steps) == 3


def test_step_limit_and_dry_run():
    env = FakeEnv()
    res = run_agent("t", env, ScriptedPolicy([{"action": "left_click", "coordinate": [5, 5]}] * 10),
                    AgentConfig(max_steps=4, dry_run=True))
    assert res.status == "max_steps" and len(res.steps) == 4
    assert env.executed == [] and all(s.result == "dry run: not executed" for s in res.steps)


def test_backend_failure_ends_the_run_with_error():
    policy = ModelPolicy(ScriptedBackend([]))
    res = run_agent("t", FakeEnv(), policy)
    assert res.status == "error" and "policy failed" in res.steps[0].error


def test_model_policy_builds_the_cookbook_messages():
    backend = ScriptedBackend([call({"action": "terminate", "status": "success"})])
    policy = ModelPolicy(backend, tool="computer_use", max_pixels=1280 * 28 * 28)
    shot = Image.new("RGB", (8, 8))
    step = policy(Observation("Open the menu", shot, 0, ["clicked the logo"]))
    assert step.calls[0].arguments == {"action": "terminate", "status": "success"}
    system, user = backend.calls[0]["messages"]
    assert system["role"] == "system" and "# Response format" in system["content"][0]["text"]
    text, image = user["content"]
    assert text["text"].startswith("The user query: Open the menu.\nTask progress") and "Step 1: clicked the logo; " in text["text"]
    assert image["image"] is shot and image["max_pixels"] == 1280 * 28 * 28


# ---------------------------------------------------------------------------------------------- browser

def require_browser():
    """The Chromium binary and Playwright; fail (not skip) with the install lines when absent."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("Playwright is required for the browser agent tests: pip install playwright "
                    "(do not run `playwright install`; the system Chromium is used)")
    from qwen3vl.tasks.agent.browser import find_chromium

    try:
        return find_chromium()
    except FileNotFoundError as e:
        pytest.fail(f"Chromium is required for the browser agent tests: apt-get install -y chromium ({e})")


def test_scripted_policy_completes_a_form_in_real_chromium(tmp_path):
    from qwen3vl.tasks.agent.browser import BrowserEnv

    require_browser()
    # viewport 800 x 600; name field centre (250, 120) px -> (312.5, 200) on the 0..1000 grid;
    # Submit centre (200, 230) px -> (250, 383.3)
    script = [
        "Thought: The name field is empty.\nAction: Click the name field.\n" + call({"action": "left_click", "coordinate": [312, 200]}),
        {"action": "type", "text": "Ada"},
        {"action": "key", "keys": ["ctrl", "a"]},                  # select all, so the next text replaces it
        {"action": "type", "text": "Grace"},
        # a model's sloppy output: trailing comma, no closing tag
        '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [250, 383],}}',
        {"action": "scroll", "pixels": -300},                        # negative = down
        {"action": "terminate", "status": "success"},
    ]
    with BrowserEnv(PAGE.as_uri(), viewport=(800, 600)) as env:
        res = run_agent("Enter the name Grace and submit", env, ScriptedPolicy(script), AgentConfig(log_dir=str(tmp_path)))
        page = env.page
        assert page.input_value("#name") == "Grace"
        assert page.inner_text("#greeting") == "Hello, Grace"
        assert page.evaluate("document.body.dataset.submitted") == "yes"
        assert page.evaluate("window.scrollY") == 300
    assert res.status == "success", [s.error for s in res.steps]
    assert all(s.error is None for s in res.steps)
    log = [json.loads(line) for line in (tmp_path / "actions.jsonl").read_text().splitlines()]
    assert [entry["tool_call"]["arguments"]["action"] for entry in log] == [
        "left_click", "type", "key", "type", "left_click", "scroll", "terminate"]
    assert log[0]["result"] == "left_click at (250, 120) px" and log[0]["executed"] is True
    shot = Image.open(tmp_path / "step_000.png")
    assert shot.size == (800, 600)


def test_dry_run_leaves_the_real_page_untouched(tmp_path):
    from qwen3vl.tasks.agent.browser import BrowserEnv

    require_browser()
    script = [{"action": "left_click", "coordinate": [312, 200]}, {"action": "type", "text": "Ada"},
              {"action": "terminate", "status": "success"}]
    with BrowserEnv(PAGE.as_uri(), viewport=(800, 600)) as env:
        res = run_agent("t", env, ScriptedPolicy(script), AgentConfig(dry_run=True, log_dir=str(tmp_path)))
        assert env.page.input_value("#name") == ""
    assert res.status == "success"
    log = [json.loads(line) for line in (tmp_path / "actions.jsonl").read_text().splitlines()]
    assert [e["executed"] for e in log] == [False, False, True] and all(e["dry_run"] for e in log)


def test_parse_step_keeps_the_problem_of_a_block_that_did_not_become_a_call():
    good = '<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", "coordinate": [1, 2]}}\n</tool_call>'
    raw = good + "\n<tool_call>\nnot json\n</tool_call>"
    step = parse_step("", tool_calls=[{"name": "computer_use", "arguments": {"action": "left_click",
                                                                           "coordinate": [1, 2]}}], raw_text=raw)
    assert [c.name for c in step.calls] == ["computer_use"]
    assert any("tool call 2: not JSON" in p for p in step.problems)
    assert parse_step("", tool_calls=[{"name": "computer_use", "arguments": {}}], raw_text=good).problems == []
