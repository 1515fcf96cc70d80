"""The request body of ``POST /v1/chat/completions``: OpenAI's fields plus ``steering``.

Unknown fields are refused (a typo such as ``"steer"`` would otherwise silently give the plain
model). ``steering`` rides in the body, so the ``openai`` client sends it with ``extra_body``.

Every field is bounded here to what the engine can take, so that no valid-JSON body reaches the
model and fails there (where it would share a batch with other clients' requests): integers to
the range torch's generator and the token counters accept, text to real Unicode (JSON's
``"\\ud800"`` escape yields a lone surrogate that the tokenizer cannot encode).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo,
                      field_validator)

MAX_STEERING_PROMPTS = 8
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20           # OpenAI's limit
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1   # OpenAI's seed range; torch takes all of it
INT32_MAX = (1 << 31) - 1


def _unicode_text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone UTF-16 surrogate escape such as "
                         "\\ud800)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode_text)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: Text


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Text | list[TextPart]
    name: Text | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class SteeringRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Text | list[Text] = Field(description="steering prompt(s); several add their vectors")
    factor: float = Field(1.0, ge=-100.0, le=100.0, allow_inf_nan=False)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value: str | list[str]) -> str | list[str]:
        prompts = [value] if isinstance(value, str) else value
        if len(prompts) > MAX_STEERING_PROMPTS:
            raise ValueError(f"at most {MAX_STEERING_PROMPTS} steering prompts")
        if any(not p.strip() for p in prompts):
            raise ValueError("a steering prompt is empty")
        return value

    def prompts(self) -> tuple[str, ...]:
        return (self.prompt,) if isinstance(self.prompt, str) else tuple(self.prompt)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Text
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float = Field(1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX)
    stop: Text | list[Text] | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    user: Text | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens tokens (load tests)
    steering: SteeringRequest | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("needs logprobs: true")
        return value

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s)
