"""A Lambda function run in-process: its real `lambda_handler`, a context object, one invocation at a time."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from devstack.events.lambda_context import LambdaContext
from devstack.stack.environment import environment_set

logger = logging.getLogger("devstack.functions")

Handler = Callable[[Any, Any], Any]

# The function whose invocation this code runs in (None: the runner's own code); the IAM proof reads it.
CURRENT_FUNCTION: ContextVar[str | None] = ContextVar("current_function", default=None)


@dataclass(frozen=True)
class FunctionSpec:
    """What the deployed stack says about a function: its name, handler module and attribute, timeout and memory."""

    name: str
    module: str
    timeout_seconds: int = 30
    memory_mb: int = 512
    handler: str = "lambda_handler"
    # Per-function variables (e.g. POWERTOOLS_SERVICE_NAME). Functions share one process, so these are set
    # only while the handler module is imported, which is when Powertools reads them.
    import_environment: Mapping[str, str] = field(default_factory=dict)


class LambdaFunction:
    """Invokes a handler like Lambda would; a lock stands in for one execution environment per function.

    Handlers keep clients in module globals (as they do between warm invocations); serialising invocations
    keeps that safe without asking handlers to be thread-safe, which Lambda never does either.
    """

    def __init__(self, spec: FunctionSpec) -> None:
        self.spec = spec
        self._handler: Handler | None = None
        self._lock = threading.Lock()
        self.invocations = 0
        self.errors = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def load(self) -> LambdaFunction:
        """Import the handler module now (the cold start), so a broken function fails the stack's start."""
        with environment_set(self.spec.import_environment):
            module = importlib.import_module(self.spec.module)
        self._handler = getattr(module, self.spec.handler)
        return self

    def invoke(self, event: Any) -> Any:
        """Run the handler; its exceptions propagate, as a failed invocation does to the caller."""
        if self._handler is None:
            self.load()
        assert self._handler is not None
        with self._lock:
            self.invocations += 1
            context = LambdaContext(
                function_name=self.spec.name,
                timeout_seconds=self.spec.timeout_seconds,
                memory_mb=self.spec.memory_mb,
            )
            started = time.monotonic()
            token = CURRENT_FUNCTION.set(self.spec.name)
            try:
                return self._handler(event, context)
            except Exception:
                self.errors += 1
                logger.exception("%s: invocation failed", self.spec.name)
                raise
            finally:
                CURRENT_FUNCTION.reset(token)
                elapsed = time.monotonic() - started
                if elapsed > self.spec.timeout_seconds:
                    logger.warning("%s: ran %.1fs, past its %ds timeout", self.name, elapsed, self.spec.timeout_seconds)
                logger.info("%s: invocation took %.3fs", self.spec.name, elapsed)
