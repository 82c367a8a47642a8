"""The request bodies of /v1/chat/completions and /v1/completions (OpenAI's field names), as pydantic models.

Types are strict (``"16"`` is not a number; 1.0 is not an integer): a body that does not fit answers 422. The
values are then checked by ``dyndepth.validate`` through ``GenerationRequest.check`` (the same checks as the
Python API and the command line): a value out of range answers 400 naming the field.

Sampling: an omitted ``temperature`` or ``top_p`` takes the model's generation_config.json (greedy when it does
not sample, as for the zoo's SmolLM2), not OpenAI's default of 1.0; ``temperature: 0`` is greedy. Fields that
OpenAI defines but dyndepth cannot honour (``logprobs``, ``tools``, penalties, ``echo``, ...) are refused with
400 when set to anything but their neutral value, never silently ignored; fields nobody defines are ignored, as
OpenAI's own server does with unknown fields from newer clients.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from dyndepth import validate
from dyndepth.errors import DyndepthError
from dyndepth.request import GenerationRequest
from dyndepth.serve.errors import APIError, from_dyndepth

MAX_STOP_STRINGS = 4  # OpenAI's limit
StrictNumber = Annotated[float, Field(strict=True)]  # accepts 1 and 1.5, refuses "1" and true


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: StrictStr  # checked by validate.chat_messages, the rule the Python API and the command line share
    content: StrictStr | list[TextPart] | None = None

    def as_turn(self) -> dict:
        """{"role", "content"} with the text parts joined."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": self.role, "content": content}


# OpenAI fields dyndepth does not implement, with the values that mean "not used" (compared with their type:
# 0 is not false, true is not 1). tool_choice "none" and function_call "none" ask for no tool call, which is what
# dyndepth does. Completions' logprobs is an integer there: 0 still asks for the chosen tokens' logprobs.
UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []), "tool_choice": (None, "none"),
               "functions": (None, []), "function_call": (None, "none"), "response_format": (None, {"type": "text"}),
               "presence_penalty": (None, 0), "frequency_penalty": (None, 0), "logit_bias": (None, {}),
               "echo": (None, False), "suffix": (None, ""), "best_of": (None, 1)}
COMPLETIONS_UNSUPPORTED = {**UNSUPPORTED, "logprobs": (None,)}


def _neutral(value, neutrals) -> bool:
    """``value`` is one of ``neutrals`` with the same kind of type (bool, number, string, list, dict)."""
    def kind(x):
        return "bool" if isinstance(x, bool) else "number" if isinstance(x, (int, float)) else type(x).__name__
    return any(value is None if n is None else (kind(value) == kind(n) and value == n) for n in neutrals)


class _Sampling(_Body):
    model: StrictStr
    max_tokens: StrictInt | None = None
    temperature: StrictNumber | None = None
    top_p: StrictNumber | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    n: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = None
    # unsupported (see UNSUPPORTED): typed loosely so that the 400 names them instead of a 422 on their type
    logprobs: Any = None
    top_logprobs: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None

    def max_new_tokens(self, default: int) -> tuple[int, str]:
        """The token budget and the field it came from."""
        return (default, "max_tokens") if self.max_tokens is None else (self.max_tokens, "max_tokens")

    unsupported: ClassVar[dict] = UNSUPPORTED

    def engine_options(self, default_max_tokens: int) -> dict:
        """Check the values (400 naming the field) and return the keywords of ``SpeculativeDecoder.stream_text``."""
        for name, neutral in self.unsupported.items():
            value = getattr(self, name, None)
            if not _neutral(value, neutral):
                raise APIError(400, f"{name} is not supported by this server; leave it unset",
                               param=name, code="unsupported_parameter")
        if self.n is not None and self.n != 1:
            raise APIError(400, f"n must be 1 (dyndepth returns one choice per request), got {self.n}",
                           param="n", code="invalid_value")
        if self.stream_options is not None and not self.stream:
            raise APIError(400, "stream_options is only allowed with stream: true", param="stream_options",
                           code="invalid_value")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", param="stop",
                           code="invalid_value")
        budget, field = self.max_new_tokens(default_max_tokens)
        request = GenerationRequest(max_new_tokens=budget, temperature=self.temperature, top_p=self.top_p,
                                    seed=self.seed, stop=tuple(stops))
        try:
            request.check()
        except DyndepthError as exc:
            raise from_dyndepth(exc, {"max_new_tokens": field}) from None
        return {"max_new_tokens": request.max_new_tokens, "temperature": request.temperature,
                "top_p": request.top_p, "seed": request.seed, "stop": request.stop or None}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage]
    max_completion_tokens: StrictInt | None = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None

    def max_new_tokens(self, default: int) -> tuple[int, str]:
        if self.max_completion_tokens is not None:  # OpenAI's newer name wins, as in OpenAI's API
            return self.max_completion_tokens, "max_completion_tokens"
        return super().max_new_tokens(default)

    def template_messages(self) -> list[dict]:
        if not self.messages:
            raise APIError(400, "messages must hold at least one message", param="messages", code="invalid_value")
        try:
            return validate.chat_messages([m.as_turn() for m in self.messages])
        except DyndepthError as exc:  # the message names the item; the field is messages
            raise APIError(400, str(exc), param="messages", code="invalid_value") from None


class CompletionRequest(_Sampling):
    prompt: StrictStr | list[StrictStr] | list[StrictInt]
    echo: Any = None
    suffix: Any = None
    best_of: Any = None
    unsupported: ClassVar[dict] = COMPLETIONS_UNSUPPORTED

    def prompt_value(self) -> str | list[int]:
        """One prompt: a string, or a list of token ids (a list of several strings is a batch, refused)."""
        p = self.prompt
        if isinstance(p, list) and p and all(isinstance(x, str) for x in p):
            if len(p) > 1:
                raise APIError(400, f"prompt holds {len(p)} prompts; this server takes one prompt per request",
                               param="prompt", code="invalid_value")
            p = p[0]
        if isinstance(p, str) and not p or isinstance(p, list) and not p:
            raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
        if isinstance(p, str):
            try:
                validate.utf8_text("prompt", p)
            except DyndepthError as exc:
                raise from_dyndepth(exc) from None
        return p


def schema_error(exc) -> APIError:
    """A pydantic ValidationError -> 422 naming the first bad field, in one line."""
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first.get("loc", ()) if not _is_type_tag(part))
    message = first.get("msg", "invalid value")
    return APIError(422, f"{loc}: {message}" if loc else message, param=loc or None, code="invalid_type"
                    if first.get("type") != "missing" else "missing_field")


def _is_type_tag(part) -> bool:
    """pydantic adds the union member tried (e.g. 'str', 'list[TextPart]') to a location; drop those."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part or part[:1].isupper()
                                      or part.startswith("function-"))
