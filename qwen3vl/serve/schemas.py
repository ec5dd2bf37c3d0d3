"""Request bodies of the OpenAI endpoints as pydantic models, checked strictly (a string is not a number, 1 is not
`true`, NaN is not a float) so a wrong type is a 400 that names the field instead of a surprise deeper down.

Unknown fields are ignored, as the OpenAI API ignores fields it does not use. Fields beyond OpenAI's (`top_k`,
`min_p`, `repetition_penalty`, `min_tokens`, `stop_token_ids`, `ignore_eos`, the media budget `min_pixels`,
`max_pixels`, `fps`, `max_frames`, and `add_vision_id`) are what the official client sends through `extra_body`:
they arrive as top-level JSON fields. Message contents are left as plain JSON here: the processor's own
validation names the message and part that is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qwen3vl.serve.errors import APIError, bad_request, is_small_int

MAX_N = 128
MAX_STOP = 16
MAX_STOP_CHARS = 1024
MAX_LOGIT_BIAS = 300  # entries, as OpenAI allows
MAX_PATTERN_CHARS = 4096  # guided_regex
MAX_CHOICES = 1024  # guided_choice

PosInt = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1 - MAX_N)]
StopList = Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(max_length=MAX_STOP)]
Pattern = Annotated[str, Field(max_length=MAX_PATTERN_CHARS)]
Choices = Annotated[list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]], Field(min_length=1, max_length=MAX_CHOICES)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class FunctionDef(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StructuredOutputs(_Strict):
    """vLLM's `structured_outputs` (extra_body): one of a regex, a list of choices, or a JSON schema."""
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")
    regex: Pattern | None = None
    choice: Choices | None = None
    json_schema: dict[str, Any] | bool | None = Field(None, alias="json")  # "json" would shadow BaseModel.json


# fields a beam search cannot honour (it scores the model's raw distribution and answers when it is done), each with
# the value that asks for nothing and so may be sent with it
# (besides null, and an empty string, list or object); `logprobs` is a bool on chat and a count on completions, where
# even 0 asks for something
NOT_WITH_BEAMS: dict[str, tuple] = {
    "stream": (False,), "top_p": (1.0,), "top_k": (-1, 0), "min_p": (0.0,), "repetition_penalty": (1.0,),
    "presence_penalty": (0.0,), "frequency_penalty": (0.0,), "stop": (), "ignore_eos": (False,), "min_tokens": (0,),
    "logit_bias": (), "guided_regex": (), "guided_choice": (), "guided_json": (), "structured_outputs": (),
    "logprobs": (False,), "top_logprobs": (), "response_format": ()}


def _asks_nothing(value: Any, neutral: tuple) -> bool:
    if value is None or (isinstance(value, (str, list, dict)) and not value):
        return True
    if isinstance(value, bool) or any(isinstance(n, bool) for n in neutral):  # a bool only equals a bool
        return any(value is n for n in neutral)
    return any(value == n for n in neutral)


class _Sampling(_Strict):
    """Fields both endpoints share."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    max_tokens: PosInt | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Annotated[str, Field(max_length=MAX_STOP_CHARS)] | StopList | None = None
    seed: Seed | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None
    # extra_body (vLLM-style) sampling fields
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logit_bias: Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]],
                          Field(max_length=MAX_LOGIT_BIAS)] | None = None
    # vLLM's structured output fields: the older guided_* ones and the newer structured_outputs object
    guided_regex: Pattern | None = None
    guided_choice: Choices | None = None
    guided_json: dict[str, Any] | bool | None = None
    structured_outputs: StructuredOutputs | None = None
    # vLLM's beam search (extra_body): `n` beams, all returned best first; transformers' num_beams semantics
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False

    def check_beam(self) -> None:
        """With `use_beam_search`, a field the search would silently ignore is a 400 naming it (temperature and
        seed excepted: a beam search is deterministic, so they have nothing to change)."""
        if not self.use_beam_search:
            return
        for name, neutral in NOT_WITH_BEAMS.items():
            value = getattr(self, name, None)
            if name == "response_format" and value is not None and value.type == "text":
                continue
            if name in self.model_fields_set and not _asks_nothing(value, neutral):
                raise bad_request(f"{name} cannot be combined with use_beam_search (the search scores the model's "
                                  "raw distribution and answers when it is done)", name)

    def guided(self) -> tuple[str, Any] | None:
        """The one structured-output request among guided_* and structured_outputs: ("regex" | "choice" | "json",
        value), or None. Several at once, or a kind this server does not enforce, is a 400 naming the field."""
        found = [(f"guided_{k}", k, v) for k in ("regex", "choice", "json")
                 if (v := getattr(self, f"guided_{k}")) is not None]
        so = self.structured_outputs
        if so is not None:
            extra = sorted(k for k, v in (so.model_extra or {}).items() if v not in (None, False))
            if extra:
                raise bad_request(f"structured_outputs.{extra[0]} is not supported by this server (regex, choice "
                                  "and json are)", "structured_outputs")
            found += [(f"structured_outputs.{k}", k, v) for k, attr in (("regex", "regex"), ("choice", "choice"),
                                                                          ("json", "json_schema"))
                      if (v := getattr(so, attr)) is not None]
        if len(found) > 1:
            raise bad_request(f"{found[0][0]} and {found[1][0]} cannot be combined: ask for one structured output",
                              found[1][0])
        return (found[0][1], found[0][2]) if found else None

    def check_logit_bias(self) -> None:
        for key in self.logit_bias or {}:
            if not is_small_int(key):  # OpenAI's keys are token ids written as strings
                raise bad_request(f"logit_bias: keys must be token ids (digits), got {key!r}", "logit_bias")

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for `LLM.sampling_params` (None: the server default)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                "seed": self.seed, "stop": [s for s in stop if s] if stop else None,
                "stop_token_ids": self.stop_token_ids, "ignore_eos": self.ignore_eos or None,
                "min_tokens": self.min_tokens, "n": self.n,
                "logit_bias": {int(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
                **self.guided_sampling()}

    def guided_sampling(self) -> dict[str, Any]:
        guided = self.guided()
        if guided is None:
            return {}
        kind, value = guided
        return {"json_schema": value} if kind == "json" else {kind: value}

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[Any]
    max_completion_tokens: PosInt | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # extra_body media budget (applies to every image/video part that does not set its own)
    min_pixels: PosInt | None = None
    max_pixels: PosInt | None = None
    fps: Annotated[float, Field(gt=0)] | None = None
    max_frames: PosInt | None = None
    add_vision_id: bool = False
    # vLLM's chat template fields: continue the final message (a prefill) instead of opening a new assistant turn
    continue_final_message: bool = False
    add_generation_prompt: bool | None = None  # None: not continue_final_message

    def sampling(self) -> dict[str, Any]:
        out = super().sampling()
        if self.max_completion_tokens is not None:
            out["max_tokens"] = self.max_completion_tokens
        if self.logprobs:
            out["logprobs"] = self.top_logprobs or 0
        return out

    def check(self) -> None:
        self.check_beam()
        if self.continue_final_message and self.add_generation_prompt:
            raise bad_request("continue_final_message and add_generation_prompt cannot both be true: one continues "
                              "the final message, the other opens a new assistant turn after it",
                              "add_generation_prompt")
        if self.continue_final_message and (self.tool_choice == "required"
                                            or isinstance(self.tool_choice, NamedToolChoice)):
            raise bad_request("tool_choice required or a named function cannot be combined with "
                              "continue_final_message (a forced call opens an answer of its own)", "tool_choice")
        if self.continue_final_message:
            fmt = self.response_format
            constrained = [k for k in ("guided_regex", "guided_choice", "guided_json", "structured_outputs")
                           if getattr(self, k) is not None]
            constrained += ["response_format"] if fmt is not None and fmt.type != "text" else []
            if constrained:
                raise bad_request(f"{constrained[0]} cannot be combined with continue_final_message: the constraint "
                                  "would start anew after the prefilled text instead of continuing it",
                                  constrained[0])
        if self.use_beam_search and (self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)):
            raise bad_request("tool_choice required or a named function cannot be combined with use_beam_search "
                              "(a forced call constrains decoding; the search does not)", "tool_choice")
        if self.top_logprobs is not None and not self.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        self.check_logit_bias()
        guided = self.guided()
        if guided is not None and (self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)):
            raise bad_request(f"tool_choice required or a named function cannot be combined with a structured "
                              f"output ({guided[0]}): the forced call's arguments follow the function's schema",
                              "tool_choice")
        if guided is not None and self.response_format is not None and self.response_format.type != "text":
            raise bad_request(f"response_format {self.response_format.type} cannot be combined with a structured "
                              f"output ({guided[0]}): ask for one", "response_format")
        names = [t.function.name for t in self.tools or []]
        choice = self.tool_choice
        if choice in ("required",) or isinstance(choice, NamedToolChoice):
            if not names:
                raise bad_request("tool_choice requires tools", "tool_choice")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise bad_request(f"tool_choice names function {choice.function.name!r}, which is not among the "
                              f"tools ({', '.join(names)})", "tool_choice")

    def media_options(self) -> dict[str, Any]:
        return {k: v for k in ("min_pixels", "max_pixels", "fps", "max_frames")
                if (v := getattr(self, k)) is not None}


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Sampling):
    prompt: Prompt
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def sampling(self) -> dict[str, Any]:
        out = super().sampling()
        out["logprobs"] = self.logprobs
        if self.echo and self.logprobs is not None:  # the echoed prompt's tokens get logprobs too
            out["prompt_logprobs"] = self.logprobs
        return out

    def check(self) -> None:
        if self.suffix:
            raise bad_request("suffix is not supported by this server", "suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise bad_request("best_of is not supported by this server (leave it out or equal to n)", "best_of")
        self.check_beam()
        self.check_logit_bias()
        self.guided()
        if self.use_beam_search and len(self.prompts()) > 1:
            raise bad_request("use_beam_search takes one prompt per request", "prompt")
        if isinstance(self.prompt, list) and not self.prompt:
            raise bad_request("prompt must not be an empty list", "prompt")
        if isinstance(self.prompt, list) and len(self.prompt) > MAX_N:
            raise bad_request(f"at most {MAX_N} prompts per request, got {len(self.prompt)}", "prompt")

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and all(isinstance(x, int) for x in p):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


class TokenizeText(_Strict):
    """`POST /tokenize` with a text prompt (vLLM's route)."""
    model: str | None = None
    prompt: Annotated[str, Field(max_length=10_000_000)]
    add_special_tokens: bool = True  # accepted for vLLM's clients: Qwen's tokenizer adds none either way
    return_token_strs: bool = False


class DetokenizeRequest(_Strict):
    """`POST /detokenize` (vLLM's route)."""
    tokens: list[Annotated[int, Field(ge=0)]]


class LoadLoRARequest(_Strict):
    """`POST /v1/load_lora_adapter` (vLLM's runtime LoRA loading)."""
    lora_name: Annotated[str, Field(min_length=1, max_length=256)]
    lora_path: Annotated[str, Field(min_length=1, max_length=4096)]


class UnloadLoRARequest(_Strict):
    """`POST /v1/unload_lora_adapter`."""
    lora_name: Annotated[str, Field(min_length=1, max_length=256)]


def parse(model: type[_Strict], body: Any):
    """Validate a decoded JSON body; the first problem becomes a 400 naming its field."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        req = model.model_validate(body)
    except ValidationError as e:
        errors = e.errors()
        err = errors[0]
        if len({_field_path(x.get("loc", ())).split(".")[0].split("[")[0] for x in errors}) == 1:
            err = max(errors, key=lambda x: len(x.get("loc", ())))  # union branches: the most specific one
        param = _field_path(err.get("loc", ()))
        value = err.get("input")
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        if len(shown) > 80:
            shown = shown[:77] + "..."
        more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
        raise APIError(400, f"{param or 'body'}: {err['msg']}, got {shown}{more}", param or None) from None
    check = getattr(req, "check", None)
    if check is not None:
        check()
    return req


def _field_path(loc: tuple) -> str:
    # pydantic puts union branch tags ('str', 'list[str]', 'NamedToolChoice', ...) in the location: our field
    # names are lowercase identifiers that are not type names, so keep only those
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.isidentifier() and part[0].islower() and part not in _TYPE_TAGS:
            out += ("." if out else "") + part
    return out


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
