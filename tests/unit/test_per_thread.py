"""PerThread: one object per thread, built on that thread's first use."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from kling_pipeline.runtime.per_thread import PerThread


def test_each_thread_builds_its_own_object_once() -> None:
    built: list[int] = []

    def build() -> object:
        built.append(threading.get_ident())
        return object()

    per_thread = PerThread(build)
    mine = per_thread.get()
    assert per_thread.get() is mine
    with ThreadPoolExecutor(max_workers=1) as pool:
        other = pool.submit(per_thread.get).result()
        assert pool.submit(per_thread.get).result() is other
    assert other is not mine
    assert len(built) == 2


def test_nothing_is_built_before_first_use() -> None:
    built: list[object] = []
    PerThread(lambda: built.append(object()))
    assert built == []
