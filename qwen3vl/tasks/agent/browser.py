"""A headless Chromium page driven through Playwright, executing computer_use / mobile_use actions.

The browser is the system Chromium (Debian: `apt-get install -y chromium`), launched by path: Playwright's
own browser download (`playwright install`) is never used. Coordinates arrive on the tool's virtual
screen (0..1000 for computer_use, 0..999 for mobile_use) and are scaled to the viewport in CSS pixels.

Mouse-wheel convention: `scroll` with positive `pixels` scrolls *up* (the tool's description), so the
wheel delta is `-pixels`; `hscroll` with positive `pixels` scrolls right. `scroll_multiplier` scales both
for models that answer in wheel "clicks" rather than pixels.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from typing import TYPE_CHECKING, Any

from qwen3vl.tasks.agent.actions import DEFAULT_SCALE, Action, to_viewport

if TYPE_CHECKING:
    from PIL import Image

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run")
_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")
_KEYS = {
    "ctrl": "Control", "control": "Control", "shift": "Shift", "alt": "Alt", "option": "Alt",
    "cmd": "Meta", "command": "Meta", "meta": "Meta", "super": "Meta", "win": "Meta", "windows": "Meta",
    "enter": "Enter", "return": "Enter", "esc": "Escape", "escape": "Escape", "tab": "Tab",
    "backspace": "Backspace", "delete": "Delete", "del": "Delete", "space": "Space", "insert": "Insert",
    "up": "ArrowUp", "down": "ArrowDown", "left": "ArrowLeft", "right": "ArrowRight",
    "arrowup": "ArrowUp", "arrowdown": "ArrowDown", "arrowleft": "ArrowLeft", "arrowright": "ArrowRight",
    "pageup": "PageUp", "pagedown": "PageDown", "pgup": "PageUp", "pgdn": "PageDown", "home": "Home", "end": "End",
    "capslock": "CapsLock",
}


class ActionError(RuntimeError):
    """An action that is valid for the tool but cannot be carried out in a browser."""


def find_chromium(explicit: str | None = None) -> str:
    """Path of the Chromium binary: `explicit`, $QWEN3VL_CHROMIUM, or the Debian locations."""
    for cand in (explicit, os.environ.get("QWEN3VL_CHROMIUM"), *_CANDIDATES, shutil.which("chromium")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise FileNotFoundError(
        "no Chromium found (looked at $QWEN3VL_CHROMIUM, " + ", ".join(_CANDIDATES) + "); install the "
        "system browser with `apt-get install -y chromium` (never `playwright install`)")


def playwright_key(name: str) -> str:
    """Playwright's name for a key as models write it ("ctrl", "Return", "a", "f5")."""
    low = name.strip().lower()
    if low in _KEYS:
        return _KEYS[low]
    if len(low) in (2, 3) and low[0] == "f" and low[1:].isdigit():
        return low.upper()
    if len(name) == 1:
        return name
    return name[:1].upper() + name[1:]


class BrowserEnv:
    """One page at `url` in a fresh headless Chromium. Use as a context manager."""

    def __init__(self, url: str, *, viewport: tuple[int, int] = (1280, 800), executable: str | None = None,
                 scroll_multiplier: float = 1.0, settle_ms: int = 150, max_wait_s: float = 10.0):
        self.url = url
        self.width, self.height = viewport
        self.executable = find_chromium(executable)
        self.scroll_multiplier, self.settle_ms, self.max_wait_s = scroll_multiplier, settle_ms, max_wait_s
        self.mouse = (self.width / 2, self.height / 2)
        self._pw: Any = None
        self._browser: Any = None
        self.page: Any = None

    def __enter__(self) -> "BrowserEnv":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the browser agent needs Playwright: pip install 'qwen3vl[agent]'") from e
        self._pw = sync_playwright().start()
        self._browser = self._pw.chromium.launch(executable_path=self.executable, args=list(CHROMIUM_ARGS))
        self.page = self._browser.new_page(viewport={"width": self.width, "height": self.height})
        self.page.goto(self.url, wait_until="load")

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        if self._pw is not None:
            self._pw.stop()
            self._pw = None

    def screenshot(self) -> "Image.Image":
        from PIL import Image

        return Image.open(io.BytesIO(self.page.screenshot(type="png"))).convert("RGB")

    def _xy(self, action: Action, key: str = "coordinate") -> tuple[float, float]:
        return to_viewport(action.args[key], self.width, self.height, DEFAULT_SCALE[action.tool])

    def _settle(self) -> None:
        # a navigation that never finishes should not stop the agent
        with contextlib.suppress(Exception):
            self.page.wait_for_load_state("domcontentloaded", timeout=5000)
        self.page.wait_for_timeout(self.settle_ms)

    def execute(self, action: Action) -> str:
        """Carry out one action; returns what happened in words. Raises ActionError if impossible here."""
        done = (self._computer if action.tool == "computer_use" else self._mobile)(action)
        self._settle()
        return done

    def _drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        m = self.page.mouse
        m.move(*start)
        m.down()
        m.move(*end, steps=10)
        m.up()
        self.mouse = end

    def _computer(self, a: Action) -> str:
        page, m = self.page, self.page.mouse
        if a.action in ("left_click", "right_click", "middle_click", "double_click", "triple_click", "mouse_move"):
            x, y = self._xy(a) if "coordinate" in a.args else self.mouse
            self.mouse = (x, y)
            if a.action == "mouse_move":
                m.move(x, y)
            elif a.action == "double_click":
                m.dblclick(x, y)
            elif a.action == "triple_click":
                m.click(x, y, click_count=3)
            else:
                m.click(x, y, button=a.action.split("_")[0])
            return f"{a.action} at ({x:.0f}, {y:.0f}) px"
        if a.action == "left_click_drag":
            start = self._xy(a, "start_coordinate") if "start_coordinate" in a.args else self.mouse
            end = self._xy(a)
            self._drag(start, end)
            return f"dragged from ({start[0]:.0f}, {start[1]:.0f}) to ({end[0]:.0f}, {end[1]:.0f}) px"
        if a.action == "type":
            page.keyboard.type(a.args["text"])
            return f"typed {len(a.args['text'])} characters"
        if a.action == "key":
            keys = [playwright_key(k) for k in a.args["keys"]]
            for k in keys:
                page.keyboard.down(k)
            for k in reversed(keys):
                page.keyboard.up(k)
            return "pressed " + "+".join(keys)
        if a.action in ("scroll", "hscroll"):
            if "coordinate" in a.args:
                self.mouse = self._xy(a)
            m.move(*self.mouse)
            delta = a.args["pixels"] * self.scroll_multiplier
            dx, dy = (delta, 0.0) if a.action == "hscroll" else (0.0, -delta)
            m.wheel(dx, dy)
            return f"wheel dx={dx:g} dy={dy:g}"
        if a.action == "wait":
            page.wait_for_timeout(min(a.args["time"], self.max_wait_s) * 1000)
            return f"waited {min(a.args['time'], self.max_wait_s):g} s"
        raise ActionError(f"computer_use action {a.action!r} has no browser effect")

    def _mobile(self, a: Action) -> str:
        page, m = self.page, self.page.mouse
        if a.action == "click":
            x, y = self._xy(a)
            m.click(x, y)
            self.mouse = (x, y)
            return f"tapped ({x:.0f}, {y:.0f}) px"
        if a.action == "long_press":
            x, y = self._xy(a)
            m.move(x, y)
            m.down()
            page.wait_for_timeout(min(a.args["time"], self.max_wait_s) * 1000)
            m.up()
            return f"long-pressed ({x:.0f}, {y:.0f}) px"
        if a.action == "swipe":
            start, end = self._xy(a), self._xy(a, "coordinate2")
            self._drag(start, end)
            return f"swiped from ({start[0]:.0f}, {start[1]:.0f}) to ({end[0]:.0f}, {end[1]:.0f}) px"
        if a.action == "type":
            page.keyboard.type(a.args["text"])
            return f"typed {len(a.args['text'])} characters"
        if a.action == "key":
            name = a.args["text"].removeprefix("KEYCODE_").lower()
            if name == "back":
                page.go_back()
                return "went back"
            page.keyboard.press(playwright_key(name))
            return f"pressed {playwright_key(name)}"
        if a.action == "system_button":
            button = a.args["button"]
            if button == "Back":
                page.go_back()
                return "went back"
            if button == "Home":
                page.goto(self.url)
                return "returned to the start page"
            if button == "Enter":
                page.keyboard.press("Enter")
                return "pressed Enter"
            raise ActionError("system_button Menu has no browser equivalent")
        if a.action == "wait":
            page.wait_for_timeout(min(a.args["time"], self.max_wait_s) * 1000)
            return f"waited {min(a.args['time'], self.max_wait_s):g} s"
        if a.action == "open":
            raise ActionError(f"mobile_use open {a.args['text']!r}: launching apps has no browser equivalent")
        raise ActionError(f"mobile_use action {a.action!r} has no browser effect")
