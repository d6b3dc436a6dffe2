"""OpenAI's request and error shapes for `gpt2 serve` (pydantic), as its API reference defines them.

Requests are validated strictly: a boolean is JSON's true or false (not "yes" or 1), an integer is not a float or a
boolean, and numbers must be finite. Every error takes OpenAI's shape, {"error": {"message", "type", "param",
"code"}}, with a 4xx status whenever the request is at fault.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_BODY = 2 * 1024 * 1024  # bytes; a full context of token ids is ~10 KB, of text a few
MAX_ROWS = 128  # prompts x n in one request
MAX_STOP = 16
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's: a signed 64-bit integer

Finite = Annotated[float, Field(allow_inf_nan=False)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """POST /v1/completions, as OpenAI defines it, plus top_k (default 40, the paper's samples)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    temperature: Finite | None = Field(1.0, ge=0.0, le=2.0)
    top_p: Finite | None = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(40, ge=-1, description="sample from the k likeliest tokens; 0 or -1: all of them")
    n: int | None = Field(1, ge=1, le=MAX_ROWS)
    best_of: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = False
    presence_penalty: Finite | None = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: Finite | None = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Finite] | None = None
    suffix: str | None = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty_list(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(isinstance(p, list) and not p for p in v)):
            raise ValueError("a prompt list needs at least one prompt, and each list of token ids one token")
        return v

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix (insertion) is not supported: GPT-2 only continues text")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (v or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids, got {key!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"logit_bias values lie in [-100, 100], got {value}")
        return v


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# The errors the /v1 routes answer, for the OpenAPI schema ("default" also keeps FastAPI from promising a 422).
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("a field is invalid (`param` names it), or the prompt and max_tokens exceed the context"),
    401: _error("the API key is missing or wrong"),
    404: _error("no such model (or route)"),
    413: _error(f"the body is larger than {MAX_BODY} bytes"),
    503: _error("the server is shutting down"),
    "default": _error("any other error, in the same shape"),
}


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.type)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(
    status: int, message: str, param: str | None = None, code: str | None = None, type_: str = "invalid_request_error"
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)
