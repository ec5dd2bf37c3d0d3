"""The `computer_use` and `mobile_use` tools (spec §10.2) in the OpenAI function format, and the prompts.

The action sets, argument names and the "screen's resolution" line follow the official
`cookbooks/utils/agent_function_call.py` and the mobile agent notebook; the wording of the descriptions
is ours. Coordinates live on a virtual screen: 1000x1000 for computer_use (spec §10.2), 999x999 for the
mobile notebook, and are scaled to the real viewport when executed.

The system prompt is the chat template's tools preamble (spec §9.1) followed by the notebook's
"Response format" section (one Thought sentence, one Action sentence, one tool call). The user turn
carries the task and the history in the notebook's form:
`The user query: {task}.\\nTask progress (You have done the following operation on the current device):
Step 1: ...; Step 2: ...; .\\n`, then the current screenshot.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

COMPUTER_ACTIONS = ("key", "type", "mouse_move", "left_click", "left_click_drag", "right_click", "middle_click",
                    "double_click", "triple_click", "scroll", "hscroll", "wait", "terminate", "answer")
MOBILE_ACTIONS = ("key", "click", "long_press", "swipe", "type", "system_button", "open", "wait", "terminate")
MOBILE_NOTEBOOK_ACTIONS = ("click", "long_press", "swipe", "type", "answer", "system_button", "wait", "terminate")

_COORD = "(x, y): pixels from the left edge and from the top edge of the screen."


def computer_use_tool(width: int = 1000, height: int = 1000) -> dict[str, Any]:
    """The computer_use function; the model sees a `width` x `height` screen (1000x1000 = relative)."""
    description = (
        "Use a mouse and keyboard to interact with a computer, and take screenshots.\n"
        "* This is an interface to a desktop GUI; there is no terminal or application menu.\n"
        "* Some applications take time to start or respond; wait and take another screenshot when needed.\n"
        f"* The screen's resolution is {width}x{height}.\n"
        "* Before moving the cursor onto an element, read its coordinates off the latest screenshot.\n"
        "* Click buttons, links and icons with the cursor tip in the centre of the element, not on its edge.")
    actions = (
        "The action to perform:\n"
        "* `key`: press the keys in `keys` in order, then release them in reverse order.\n"
        "* `type`: type a string of text.\n"
        "* `mouse_move`: move the cursor to `coordinate`.\n"
        "* `left_click`: left click at `coordinate`.\n"
        "* `left_click_drag`: press the left button and drag the cursor to `coordinate`.\n"
        "* `right_click`: right click at `coordinate`.\n"
        "* `middle_click`: middle click at `coordinate`.\n"
        "* `double_click`: double click at `coordinate`.\n"
        "* `triple_click`: triple click at `coordinate`.\n"
        "* `scroll`: scroll the mouse wheel by `pixels`.\n"
        "* `hscroll`: scroll horizontally by `pixels`.\n"
        "* `wait`: wait `time` seconds for something to change.\n"
        "* `terminate`: end the task and report its `status`.\n"
        "* `answer`: answer a question with `text`.")
    return {"type": "function", "function": {
        "name": "computer_use",
        "description": description,
        "parameters": {
            "properties": {
                "action": {"description": actions, "enum": list(COMPUTER_ACTIONS), "type": "string"},
                "keys": {"description": "Required only by `action=key`.", "type": "array"},
                "text": {"description": "Required only by `action=type` and `action=answer`.", "type": "string"},
                "coordinate": {"description": _COORD, "type": "array"},
                "pixels": {"description": "Amount to scroll; positive scrolls up, negative scrolls down. "
                                          "Required only by `action=scroll` and `action=hscroll`.", "type": "number"},
                "time": {"description": "Seconds to wait. Required only by `action=wait`.", "type": "number"},
                "status": {"description": "Task status. Required only by `action=terminate`.", "type": "string",
                           "enum": ["success", "failure"]},
            },
            "required": ["action"],
            "type": "object",
        },
    }}


def mobile_use_tool(width: int = 999, height: int = 999, *, variant: str = "utils") -> dict[str, Any]:
    """The mobile_use function: `variant="utils"` (agent_function_call.py, with key/open) or "notebook"
    (the mobile agent notebook's inline schema, with answer and without key/open)."""
    if variant not in ("utils", "notebook"):
        raise ValueError(f"mobile_use variant {variant!r} unknown; expected 'utils' or 'notebook'")
    acts = MOBILE_ACTIONS if variant == "utils" else MOBILE_NOTEBOOK_ACTIONS
    doc = {
        "key": "`key`: send a key event (adb keyevent names such as volume_up, power, clear).",
        "click": "`click`: tap the point `coordinate`.",
        "long_press": "`long_press`: press the point `coordinate` for `time` seconds.",
        "swipe": "`swipe`: swipe from `coordinate` to `coordinate2`.",
        "type": "`type`: enter `text` into the focused input box.",
        "answer": "`answer`: output the answer in `text`.",
        "system_button": "`system_button`: press a system `button`.",
        "open": "`open`: open the app named in `text`.",
        "wait": "`wait`: wait `time` seconds for something to change.",
        "terminate": "`terminate`: end the task and report its `status`.",
    }
    text_for = "`action=key`, `action=type` and `action=open`" if variant == "utils" else "`action=type` and `action=answer`"
    description = (
        "Use a touchscreen to interact with a mobile device, and take screenshots.\n"
        "* This is an interface to a mobile device with a touchscreen: tap, type, swipe and so on.\n"
        "* Some applications take time to start or respond; wait and take another screenshot when needed.\n"
        f"* The screen's resolution is {width}x{height}.\n"
        "* Tap buttons, links and icons in the centre of the element, not on its edge.")
    return {"type": "function", "function": {
        "name": "mobile_use",
        "description": description,
        "parameters": {
            "properties": {
                "action": {"description": "The action to perform:\n" + "\n".join(f"* {doc[a]}" for a in acts),
                           "enum": list(acts), "type": "string"},
                "coordinate": {"description": _COORD + " Required only by `action=click`, `action=long_press` "
                                              "and `action=swipe`.", "type": "array"},
                "coordinate2": {"description": _COORD + " Required only by `action=swipe`.", "type": "array"},
                "text": {"description": f"Required only by {text_for}.", "type": "string"},
                "time": {"description": "Seconds. Required only by `action=long_press` and `action=wait`.",
                         "type": "number"},
                "button": {"description": "Back returns to the previous screen, Home to the desktop, Menu opens the "
                                          "recent-apps menu, Enter presses enter. Required only by "
                                          "`action=system_button`.", "enum": ["Back", "Home", "Menu", "Enter"],
                           "type": "string"},
                "status": {"description": "Task status. Required only by `action=terminate`.", "type": "string",
                           "enum": ["success", "failure"]},
            },
            "required": ["action"],
            "type": "object",
        },
    }}


def tools_preamble(tools: Sequence[dict[str, Any]]) -> str:
    """The system text the chat template writes for `tools` (spec §9.1), without a leading system text."""
    listed = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
            f"{listed}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


RESPONSE_FORMAT = (
    "# Response format\n\n"
    "Response format for every step:\n"
    "1) Thought: one concise sentence explaining the next move (no multi-step reasoning).\n"
    "2) Action: a short imperative describing what to do in the UI.\n"
    "3) A single <tool_call>...</tool_call> block containing only the JSON: "
    '{"name": <function-name>, "arguments": <args-json-object>}.\n\n'
    "Rules:\n"
    "- Output exactly in the order: Thought, Action, <tool_call>.\n"
    "- Be brief: one sentence for Thought, one for Action.\n"
    "- Do not output anything else outside those three parts.\n"
    "- If finishing, use action=terminate in the tool call.")


def system_prompt(tools: Sequence[dict[str, Any]], *, response_format: bool = True) -> str:
    text = tools_preamble(tools)
    return text + "\n\n" + RESPONSE_FORMAT if response_format else text


def user_prompt(task: str, history: Sequence[str]) -> str:
    """The notebook's user text: the query and the numbered steps done so far."""
    # the notebook strips newlines and double quotes from each step before joining
    cleaned = [h.replace("\n", " ").replace('"', "") for h in history]
    steps = "".join(f"Step {i}: {h}; " for i, h in enumerate(cleaned, start=1))
    query = task.strip().rstrip(".")
    return (f"The user query: {query}.\n"
            f"Task progress (You have done the following operation on the current device): {steps}.\n")
