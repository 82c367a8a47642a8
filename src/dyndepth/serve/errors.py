"""OpenAI's error body and the status code of every failure the server can answer.

Every error response is ``{"error": {"message", "type", "param", "code"}}`` with one line of message, never a
traceback:

    400 invalid_request_error   malformed JSON, a value out of range, n != 1, a prompt over the context window,
                                max_tokens over the context window, text that is not UTF-8 (a lone surrogate)
    401 authentication_error    a missing or wrong API key
    404 not_found_error         an unknown model (code model_not_found) or route
    405 invalid_request_error   a route called with the wrong method
    413 invalid_request_error   a body over the size limit
    415 invalid_request_error   a POST body whose Content-Type is not application/json
    422 invalid_request_error   a body that does not fit the schema (missing field, wrong type)
    429 rate_limit_error        the queue is full (code queue_full)
    500 server_error            an unexpected failure inside one generation (logged with its traceback)
    503 server_error            the engine is not running
    504 timeout_error           the request ran past --request-timeout
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from dyndepth.errors import DyndepthError
from dyndepth.validate import OptionError

# The engine's option names -> the OpenAI field a client sent.
API_FIELDS = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed",
              "stop": "stop", "input_ids": "prompt"}


class APIError(Exception):
    """A failure to answer with OpenAI's error body and ``status``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        # a lone surrogate a client sent (valid JSON) must not make the error body itself unencodable
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def from_dyndepth(exc: DyndepthError, field_names: dict | None = None) -> APIError:
    """A user error raised by the engine's checks -> 400, naming the request field when there is one."""
    if isinstance(exc, OptionError):
        names = dict(API_FIELDS, **(field_names or {}))
        field = names.get(exc.option, exc.option)
        return APIError(400, exc.render(field), param=field, code="invalid_value")
    return APIError(400, _one_line(str(exc)), code="invalid_request")


def internal(exc: BaseException) -> APIError:
    return APIError(500, f"the generation failed ({type(exc).__name__}); the server logged the details",
                    type="server_error", code="internal_error")


def timeout(seconds: float) -> APIError:
    return APIError(504, f"the request ran past the server's request timeout of {seconds:g} s",
                    type="timeout_error", code="request_timeout")


def queue_full(size: int) -> APIError:
    return APIError(429, f"the server is busy: all {size} queue places are taken; retry later",
                    type="rate_limit_error", code="queue_full")


def model_not_found(name, served: str) -> APIError:
    return APIError(404, f"the model {name!r} does not exist; this server serves {served!r}",
                    type="not_found_error", param="model", code="model_not_found")


def _one_line(text: str) -> str:
    return " ".join(text.split())
