"""The /_sim control API: introspection, faults, reset and driving tasks by hand. No auth."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from devstack.kling_simulator.responses import Response, control_error, json_response
from devstack.kling_simulator.state import SimState
from devstack.kling_simulator.tasks import TransitionError

CONTROL_PREFIX = "/_sim/"
_TASK_ACTION = re.compile(r"^/_sim/tasks/(?P<task_id>[^/]+)/(?P<action>advance|callback)$")


def handle_control(state: SimState, method: str, path: str, query: Mapping[str, str], raw: bytes) -> Response:
    path = path.rstrip("/")
    if method == "GET":
        if path == "/_sim/health":
            return json_response(200, {"status": "ok"})
        if path == "/_sim/requests":
            seen = state.requests(query.get("method"), query.get("path_prefix"))
            return json_response(200, [r.to_json() for r in seen])
        if path == "/_sim/tasks":
            return json_response(200, state.list_tasks())
        if path == "/_sim/callbacks":
            return json_response(200, [d.to_json() for d in state.callbacks.deliveries()])
        if path == "/_sim/faults":
            return json_response(200, state.current_faults().to_json())
    if method == "POST":
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            return control_error(400, "body: must be valid JSON")
        return _post(state, path, body)
    return control_error(404, f"no control endpoint {method} {path}")


def _post(state: SimState, path: str, body: Any) -> Response:
    if path == "/_sim/reset":
        state.reset()
        return json_response(200, {"status": "reset"})
    if path == "/_sim/faults":
        try:
            return json_response(200, state.set_faults(body).to_json())
        except ValueError as exc:
            return control_error(400, str(exc))
    match = _TASK_ACTION.match(path)
    if match is None:
        return control_error(404, f"no control endpoint POST {path}")
    task_id = match["task_id"]
    try:
        if match["action"] == "callback":
            return json_response(200, {"sent": state.resend_callback(task_id)})
        if not isinstance(body, dict) or not isinstance(body.get("to"), str):
            return control_error(400, f'body: must be {{"to": <status>, "message"?: <text>}} (got {body!r})')
        message = body.get("message")
        return json_response(200, state.advance(task_id, body["to"], message if isinstance(message, str) else None))
    except KeyError:
        return control_error(404, f"task_id: no such task (got {task_id!r})")
    except TransitionError as exc:
        return control_error(409, str(exc))
