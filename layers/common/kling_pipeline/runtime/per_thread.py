"""One object per worker thread, for parts that must not be shared across threads (boto3 resources)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerThread(Generic[T]):
    """`get()` returns the calling thread's own `T`, built by `factory` on that thread's first call."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._local = threading.local()

    def get(self) -> T:
        try:
            value: T = self._local.value
        except AttributeError:
            value = self._local.value = self._factory()
        return value
