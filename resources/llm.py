"""A small JSON-answering LLM client over litellm.

Used only where a deterministic method exists to fall back to (risk notes): every failure is raised as
:class:`LlmError` with a one-line reason, so callers can label the fallback with it.

An answer is untrusted input: it is size-limited before it is parsed, a nesting too deep for the parser
is a failure like any other, and the timeout is a wall-clock bound on the whole call (litellm and the
provider SDK are told not to retry, which would multiply it).
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from types import ModuleType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

# litellm fetches its model cost map from GitHub at import time unless told otherwise; OptiInfra must
# import (and run its tests) offline, so use the map bundled with the package. Set before any import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

T = TypeVar("T", bound=BaseModel)

# Far above any useful risk note (a few sentences and factors), far below what could hurt to parse or store.
MAX_ANSWER_CHARS = 16_000

_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def _litellm() -> ModuleType:
    """litellm, imported on first use: the import takes seconds, and most runs configure no LLM."""
    import litellm

    # litellm prints a "Give Feedback / Get Help" banner on every exception; our errors carry the reason.
    litellm.suppress_debug_info = True
    return litellm


class LlmError(RuntimeError):
    """An LLM call did not give a usable answer. The message is one short line saying why."""


def _first_line(reason: object) -> str:
    text = str(reason).strip()
    return text.splitlines()[0][:200] if text else type(reason).__name__


def strip_fences(content: str) -> str:
    """The content without a surrounding Markdown code fence (models often wrap JSON in ```json)."""
    match = _FENCE.match(content)
    return match.group(1).strip() if match else content.strip()


def parse_json_answer(content: str, schema: type[T], context: dict[str, Any] | None = None) -> T:
    """Parse an LLM answer into ``schema``; :class:`LlmError` when it is too long, not JSON (or nested
    deeper than the parser goes) or does not fit."""
    if len(content) > MAX_ANSWER_CHARS:
        raise LlmError(f"answer is {len(content):,} characters, over the {MAX_ANSWER_CHARS:,} allowed")
    text = strip_fences(content)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LlmError(f"answer is not JSON ({exc.msg} at char {exc.pos}): {text[:80]!r}") from exc
    except RecursionError:
        raise LlmError("answer is nested deeper than the JSON parser allows") from None
    try:
        return schema.model_validate(data, context=context)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise LlmError(f"answer does not match {schema.__name__}: {problems}") from exc


class LlmClient:
    """One configured litellm model, asked for JSON answers."""

    def __init__(self, model: str, timeout_s: float = 20.0) -> None:
        if not model:
            raise ValueError("LlmClient needs a litellm model name (use configured_llm for 'maybe none')")
        self.model = model
        self.timeout_s = timeout_s

    def complete_json(
        self,
        system: str,
        user: str,
        schema: type[T],
        *,
        mock_response: str | None = None,
        litellm_args: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
    ) -> T:
        """Ask ``system``/``user`` and parse the answer into ``schema``.

        ``mock_response`` is litellm's own argument: the call goes through litellm's real code path but
        returns this text instead of reaching a provider (tests and offline demos); ``litellm_args`` are
        passed to ``litellm.completion`` as they are (e.g. ``mock_delay``, ``api_base``); ``context`` is
        pydantic's validation context for ``schema``.
        """
        content = self._complete(system, user, mock_response, litellm_args or {})
        return parse_json_answer(content, schema, context)

    def _complete(
        self, system: str, user: str, mock_response: str | None, litellm_args: dict[str, Any]
    ) -> str:
        litellm = _litellm()
        call = {
            "model": self.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "timeout": self.timeout_s,
            "response_format": {"type": "json_object"},
            "mock_response": mock_response,
            # A retry restarts the clock: three tries of a 3 s timeout took 16 s. One try, one timeout.
            "num_retries": 0,
            "max_retries": 0,
            **litellm_args,
        }
        # litellm's timeout bounds each socket wait, not the call: a provider trickling bytes or a slow
        # client path outlives it. The deadline is enforced here; a late call is abandoned to its thread.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm")
        try:
            response = pool.submit(litellm.completion, **call).result(timeout=self.timeout_s)
        except (FutureTimeout, litellm.Timeout) as exc:
            raise LlmError(f"{self.model} timed out after {self.timeout_s:g}s") from exc
        except Exception as exc:  # litellm maps every provider failure onto its own exception family
            raise LlmError(f"{self.model} call failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        content = response.choices[0].message.content
        if not content:
            raise LlmError(f"{self.model} returned an empty answer")
        return content


def configured_llm(model: str, timeout_s: float) -> LlmClient | None:
    """The client for ``model`` (OPTIINFRA_LLM_MODEL), or None when no model is configured ('')."""
    model = model.strip()
    return LlmClient(model, timeout_s) if model else None
