"""Validated GUI actions: a tool call checked against the computer_use / mobile_use argument rules.

`validate_call` turns `{"name": "computer_use", "arguments": {"action": "left_click", "coordinate":
[500, 300]}}` into an `Action`, or returns a sentence saying what is wrong (unknown tool or action,
missing or malformed argument). It is lenient where models commonly drift: `keys` given as "ctrl+c",
coordinates as strings or nested one level deeper, a missing `time` for wait (1 s).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from qwen3vl.tasks.agent.tools import COMPUTER_ACTIONS, MOBILE_ACTIONS

CLICKS = ("left_click", "right_click", "middle_click", "double_click", "triple_click", "mouse_move")
# virtual screen each tool's coordinates are written on (see tools.py)
DEFAULT_SCALE = {"computer_use": 1000.0, "mobile_use": 999.0}


@dataclass
class Action:
    tool: str
    action: str
    args: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.tool, "arguments": {"action": self.action, **self.args}}


def _coord(raw: Any) -> tuple[float, float] | None:
    if isinstance(raw, str):
        raw = raw.strip("()[] ").replace(",", " ").split()
    if isinstance(raw, (list, tuple)) and len(raw) == 1 and isinstance(raw[0], (list, tuple)):
        raw = raw[0]
    if not isinstance(raw, (list, tuple)) or len(raw) != 2:
        return None
    try:
        return float(raw[0]), float(raw[1])
    except (TypeError, ValueError):
        return None


def _number(raw: Any) -> float | None:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None


def validate_call(call: dict[str, Any], tools: Sequence[str] = ("computer_use", "mobile_use")) -> Action | str:
    """An Action from a tool call, or why it cannot be executed."""
    name = call.get("name")
    args = dict(call.get("arguments") or {})
    if name not in tools:
        return f"unknown tool {name!r}; expected {' or '.join(tools)}"
    action = args.pop("action", None)
    allowed = COMPUTER_ACTIONS if name == "computer_use" else MOBILE_ACTIONS + ("answer",)
    if action not in allowed:
        return f"{name} has no action {action!r}; expected one of {', '.join(allowed)}"
    notes: list[str] = []
    out: dict[str, Any] = {}

    def need_coord(key: str, required: bool = True) -> str | None:
        if key not in args:
            return f"{action} needs `{key}`" if required else None
        c = _coord(args[key])
        if c is None:
            return f"`{key}` of {action} is {args[key]!r}; expected [x, y]"
        out[key] = c
        return None

    def need_text(key: str) -> str | None:
        if not isinstance(args.get(key), str):
            return f"{action} needs `{key}` as a string (got {json.dumps(args.get(key))})"
        out[key] = args[key]
        return None

    err: str | None = None
    if name == "computer_use":
        if action == "key":
            keys = args.get("keys", args.get("text"))
            if isinstance(keys, str):
                keys = [k for k in keys.replace(" ", "").split("+") if k]
                notes.append("keys given as a string, split on '+'")
            if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
                err = f"key needs `keys` as a list of key names (got {json.dumps(args.get('keys'))})"
            else:
                out["keys"] = keys
        elif action in ("type", "answer"):
            err = need_text("text")
        elif action in CLICKS:
            err = need_coord("coordinate", required=action == "mouse_move")
        elif action == "left_click_drag":
            err = need_coord("coordinate") or need_coord("start_coordinate", required=False)
        elif action in ("scroll", "hscroll"):
            px = _number(args.get("pixels"))
            if px is None:
                err = f"{action} needs `pixels` as a number (got {json.dumps(args.get('pixels'))})"
            else:
                out["pixels"] = px
                err = need_coord("coordinate", required=False)
    else:
        if action == "click":
            err = need_coord("coordinate")
        elif action == "long_press":
            err = need_coord("coordinate")
            out["time"] = _number(args.get("time")) or 1.0
        elif action == "swipe":
            err = need_coord("coordinate") or need_coord("coordinate2")
        elif action in ("type", "key", "open", "answer"):
            err = need_text("text")
        elif action == "system_button":
            if args.get("button") not in ("Back", "Home", "Menu", "Enter"):
                err = f"system_button needs `button` in Back, Home, Menu, Enter (got {json.dumps(args.get('button'))})"
            else:
                out["button"] = args["button"]
    if err:
        return err
    if action == "wait":
        t = _number(args.get("time"))
        if t is None:
            notes.append("wait without `time`; waiting 1 s")
        out["time"] = 1.0 if t is None else max(0.0, t)
    if action == "terminate":
        status = args.get("status")
        if status not in ("success", "failure"):
            notes.append(f"terminate status {status!r} is not success/failure; read as failure")
            status = "failure"
        out["status"] = status
    return Action(name, action, out, notes)


def to_viewport(coord: tuple[float, float], width: int, height: int, scale: float) -> tuple[float, float]:
    """A virtual-screen coordinate (0..scale) in CSS pixels of a `width` x `height` viewport, kept inside it."""
    x = min(max(coord[0], 0.0), scale) / scale * width
    y = min(max(coord[1], 0.0), scale) / scale * height
    return min(x, width - 1.0), min(y, height - 1.0)


def describe(action: Action) -> str:
    """A short history line for an action when the model gave no `Action:` sentence."""
    a = action.args
    if "coordinate" in a and "coordinate2" in a:
        return f"{action.action} from {list(map(round, a['coordinate']))} to {list(map(round, a['coordinate2']))}"
    if "coordinate" in a:
        return f"{action.action} at {list(map(round, a['coordinate']))}"
    if "text" in a:
        return f"{action.action} {a['text']!r}"
    if "keys" in a:
        return f"key {'+'.join(a['keys'])}"
    if "pixels" in a:
        return f"{action.action} {a['pixels']:g} pixels"
    if "button" in a:
        return f"press {a['button']}"
    if "time" in a:
        return f"wait {a['time']:g} s"
    return action.action
