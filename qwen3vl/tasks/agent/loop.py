"""The agent loop: screenshot -> policy -> tool call -> action -> screenshot, with a step limit.

Each step is appended to `actions.jsonl` in the log directory (with the screenshot the policy saw,
`step_000.png`, ...) as soon as it is done, so a crashed or interrupted run still leaves its trail.
In dry-run mode actions are validated and logged but not executed.

Bad model output never raises: a reply without a usable tool call, or with an action the tool does not
know, is logged with the reason, noted in the history so the model can correct itself, and the loop
goes on; `max_invalid` such replies in a row end the run with status "invalid_output". A backend
failure ends it with status "error". The run ends "success"/"failure" on `terminate`, or
"max_steps" when the step limit is reached.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qwen3vl.tasks.agent.actions import Action, describe, validate_call
from qwen3vl.tasks.agent.policy import Observation, Policy

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


class Environment(Protocol):
    def screenshot(self) -> "Image.Image": ...

    def execute(self, action: Action) -> str: ...


@dataclass
class AgentConfig:
    max_steps: int = 15
    dry_run: bool = False
    log_dir: str | None = None
    max_invalid: int = 3
    tools: tuple[str, ...] = ("computer_use", "mobile_use")


@dataclass
class StepRecord:
    step: int
    response: str = ""
    thought: str = ""
    action_text: str = ""
    tool_call: dict[str, Any] | None = None
    executed: bool = False
    result: str = ""
    error: str | None = None
    problems: list[str] = field(default_factory=list)
    screenshot: str | None = None
    seconds: float = 0.0


@dataclass
class AgentResult:
    status: str  # success | failure | max_steps | invalid_output | error
    steps: list[StepRecord] = field(default_factory=list)
    answer: str | None = None
    log_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "answer": self.answer, "steps": len(self.steps), "log": self.log_path}


def run_agent(task: str, env: Environment, policy: Policy, config: AgentConfig | None = None) -> AgentResult:
    """Drive `env` with `policy` until terminate, the step limit, or too many unusable replies."""
    cfg = config or AgentConfig()
    log_dir = Path(cfg.log_dir) if cfg.log_dir else None
    log_file = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(log_dir / "actions.jsonl", "w", encoding="utf-8")
    result = AgentResult("max_steps", log_path=str(log_dir / "actions.jsonl") if log_dir else None)
    history: list[str] = []
    invalid_run = 0
    try:
        for step in range(cfg.max_steps):
            t0 = time.perf_counter()
            rec = StepRecord(step)
            shot = env.screenshot()
            if log_dir is not None:
                rec.screenshot = f"step_{step:03d}.png"
                shot.save(log_dir / rec.screenshot)
            stop = _one_step(task, env, policy, cfg, shot, history, rec, result)
            rec.seconds = round(time.perf_counter() - t0, 3)
            result.steps.append(rec)
            if log_file is not None:
                log_file.write(json.dumps({"task": task, "dry_run": cfg.dry_run, **asdict(rec)}, ensure_ascii=False) + "\n")
                log_file.flush()
            invalid_run = invalid_run + 1 if rec.tool_call is None and rec.error else 0
            if stop:
                break
            if invalid_run >= cfg.max_invalid:
                result.status = "invalid_output"
                break
        if log_dir is not None:
            env.screenshot().save(log_dir / "final.png")
    finally:
        if log_file is not None:
            log_file.close()
    return result


def _one_step(task: str, env: Environment, policy: Policy, cfg: AgentConfig, shot: "Image.Image",
              history: list[str], rec: StepRecord, result: AgentResult) -> bool:
    """Ask, validate, execute one step; fills `rec`. True when the run is over."""
    try:
        ps = policy(Observation(task, shot, rec.step, list(history)))
    except Exception as e:  # the backend failed (network, out of replies): report and stop
        rec.error = f"policy failed: {type(e).__name__}: {e}"
        log.error("step %d: %s", rec.step, rec.error)
        result.status = "error"
        return True
    rec.response, rec.thought, rec.action_text, rec.problems = ps.response, ps.thought, ps.action_text, list(ps.problems)
    if not ps.calls:
        rec.error = "no usable tool call: " + ("; ".join(ps.problems) or "reply has no <tool_call>")
        history.append("(the reply had no valid tool call; answer with exactly one <tool_call>)")
        log.warning("step %d: %s", rec.step, rec.error)
        return False
    if len(ps.calls) > 1:
        rec.problems.append(f"{len(ps.calls)} tool calls in one reply; only the first was used")
    call = ps.calls[0].to_dict()
    action = validate_call(call, cfg.tools)
    if isinstance(action, str):
        rec.error = f"invalid tool call: {action}"
        history.append(f"(invalid action: {action})")
        log.warning("step %d: %s", rec.step, rec.error)
        return False
    rec.tool_call = action.to_dict()
    rec.problems.extend(action.notes)
    summary = ps.action_text or describe(action)
    if action.action == "terminate":
        rec.executed, rec.result = True, f"terminated: {action.args['status']}"
        result.status = action.args["status"]
        return True
    if action.action == "answer":
        rec.executed, rec.result = True, "answer recorded"
        result.answer = action.args["text"]
        history.append(summary)
        return False
    if cfg.dry_run:
        rec.result = "dry run: not executed"
    else:
        try:
            rec.result = env.execute(action)
            rec.executed = True
        except Exception as e:  # an impossible action is reported to the log and the model, not raised
            rec.error = f"action failed: {type(e).__name__}: {e}"
            log.warning("step %d: %s", rec.step, rec.error)
    history.append(summary)
    return False
