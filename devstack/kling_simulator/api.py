"""Kling's image-generation API: create, query one, list, under the relay and the official path forms."""

from __future__ import annotations

import json
from collections.abc import Mapping

from devstack.kling_simulator.auth import check_authorization
from devstack.kling_simulator.errors import KlingError, invalid
from devstack.kling_simulator.responses import Response, envelope, error_response
from devstack.kling_simulator.state import SimState
from devstack.kling_simulator.validation import validate_create

API_ROOTS = ("/kling/v1/images/generations", "/v1/images/generations")
MAX_PAGE_SIZE = 500


def is_api_path(path: str) -> bool:
    return any(path == root or path.startswith(root + "/") for root in API_ROOTS)


def handle_api(
    state: SimState, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], raw: bytes
) -> Response:
    """Answer one Kling API call, latency fault included."""
    with state.lock:
        delay = state.faults.latency_ms / 1000
    try:
        response = _route(state, method, path, query, headers, raw)
    except KlingError as error:
        response = error_response(error)
    response.delay = delay
    return response


def _route(
    state: SimState, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], raw: bytes
) -> Response:
    with state.lock:
        injected = state.faults.take_auth_error()
    if injected is not None:
        raise KlingError(injected)
    check_authorization(headers.get("authorization"), state.config)
    root = next(r for r in API_ROOTS if path == r or path.startswith(r + "/"))
    rest = path[len(root) :].strip("/")
    if not rest:
        if method == "POST":
            return _create(state, raw)
        if method == "GET":
            return _list(state, query)
    elif "/" not in rest and method == "GET":
        return _get(state, rest)
    raise KlingError(1202, f"Invalid request method: {method} {path}")


def _create(state: SimState, raw: bytes) -> Response:
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise invalid("body: must be valid JSON") from None
    task, disconnect, garbled = state.create_task(validate_create(body))
    if garbled == "html":
        return Response(200, b"<html><body>Request accepted</body></html>", content_type="text/html")
    view = task.create_view()
    if garbled == "no_status":
        view = {name: value for name, value in view.items() if name != "task_status"}
    response = envelope(view)
    response.disconnect = disconnect
    return response


def _get(state: SimState, task_or_external_id: str) -> Response:
    task = state.find(task_or_external_id)
    if task is None:
        raise KlingError(1203, "task not found")
    return envelope(task)


def _list(state: SimState, query: Mapping[str, str]) -> Response:
    page = _page_param(query, "pageNum", 1, 1_000_000)
    size = _page_param(query, "pageSize", 30, MAX_PAGE_SIZE)
    tasks = state.list_tasks()
    return envelope(tasks[(page - 1) * size : page * size])


def _page_param(query: Mapping[str, str], name: str, default: int, highest: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= highest:
        raise invalid(f"{name}: must be an integer between 1 and {highest} (got {text!r})")
    return int(text)
