"""API Gateway HTTP API (payload format 2.0) events and responses, as API Gateway builds and reads them.

Tests drive the webhook with these events, and the local stack uses them to turn a real HTTP request into the
event Lambda would receive and the function's answer back into an HTTP response.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from devstack.events import ACCOUNT_ID, REGION
from kling_pipeline.contract.callback_tokens import CALLBACK_ROUTE

API_ID = "localapi01"
DOMAIN_NAME = f"{API_ID}.execute-api.{REGION}.amazonaws.com"

# HTTP APIs pass these bodies as text; every other content type (or none) arrives base64-encoded.
_TEXT_TYPES = re.compile(r"^(text/.*|application/(json|xml|javascript)|application/[\w.+-]+\+(json|xml))$")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def http_api_event(
    method: str,
    path: str,
    *,
    raw_query: str = "",
    headers: Headers = (),
    body: bytes | str | None = None,
    route_key: str = "$default",
    path_parameters: Mapping[str, str] | None = None,
    source_ip: str = "127.0.0.1",
    stage: str = "$default",
    request_id: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The event API Gateway sends for one request: header names lower-cased, repeated headers and query
    parameters joined with commas, cookies moved to `cookies`, binary bodies base64-encoded, and keys that
    API Gateway leaves out when empty (`queryStringParameters`, `pathParameters`, `body`, `cookies`) left out.
    `path` is the raw (still percent-encoded) request path, `raw_query` the raw query string."""
    timestamp = time.time() if now is None else now
    request_id = request_id or base64.b32encode(uuid.uuid4().bytes[:10]).decode().rstrip("=")
    header_map = _joined(_pairs(headers), lower=True)
    header_map.setdefault("host", DOMAIN_NAME)
    header_map.setdefault("x-forwarded-for", source_ip)
    header_map.setdefault("x-forwarded-port", "443")
    header_map.setdefault("x-forwarded-proto", "https")
    header_map.setdefault("x-amzn-trace-id", f"Root=1-{int(timestamp):08x}-{uuid.uuid4().hex[:24]}")
    cookie_header = header_map.pop("cookie", None)
    body_bytes = body.encode() if isinstance(body, str) else body
    if body_bytes is not None:
        header_map.setdefault("content-length", str(len(body_bytes)))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": raw_query,
    }
    if cookie_header:
        event["cookies"] = [cookie.strip() for cookie in cookie_header.split(";") if cookie.strip()]
    event["headers"] = header_map
    if raw_query:
        event["queryStringParameters"] = _joined(parse_qsl(raw_query, keep_blank_values=True))
    event["requestContext"] = {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": header_map["host"].split(":", 1)[0],
        "domainPrefix": header_map["host"].split(".", 1)[0],
        "http": {
            "method": method.upper(),
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": header_map.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": stage,
        "time": datetime.fromtimestamp(timestamp, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
        "timeEpoch": int(timestamp * 1000),
    }
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if body_bytes is not None and body_bytes != b"":
        event.update(_encoded_body(body_bytes, header_map.get("content-type", "")))
    else:
        event["isBase64Encoded"] = False
    return event


def match_route(routes: Iterable[str], method: str, raw_path: str) -> tuple[str, dict[str, str]] | None:
    """The route key (e.g. `POST /callbacks/kling/{job_id}`) a request matches, with its decoded path
    parameters; None when no route matches (API Gateway would answer 404 itself)."""
    for route in routes:
        route_method, template = route.split(" ", 1)
        if route_method not in (method.upper(), "ANY"):
            continue
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        found = re.fullmatch(pattern, raw_path)
        if found:
            return route, {name: unquote(value) for name, value in found.groupdict().items()}
    return None


def event_for_request(
    routes: Iterable[str],
    method: str,
    target: str,
    *,
    headers: Headers = (),
    body: bytes | None = None,
    source_ip: str = "127.0.0.1",
    now: float | None = None,
) -> dict[str, Any] | None:
    """The event for a raw HTTP request (`target` is the request line's path and query), or None if unrouted."""
    parts = urlsplit(target)
    matched = match_route(routes, method, parts.path)
    if matched is None:
        return None
    route_key, parameters = matched
    return http_api_event(
        method,
        parts.path,
        raw_query=parts.query,
        headers=headers,
        body=body,
        route_key=route_key,
        path_parameters=parameters,
        source_ip=source_ip,
        now=now,
    )


def kling_callback_event(
    callback_url: str, body: bytes | str, *, headers: Headers = (), now: float | None = None
) -> dict[str, Any]:
    """The event for Kling POSTing `body` to a job's callback_url (`.../callbacks/kling/{job_id}?token=...`)."""
    parts = urlsplit(callback_url)
    all_headers = [("Content-Type", "application/json"), ("User-Agent", "kling-callback"), *_pairs(headers)]
    event = event_for_request(
        [CALLBACK_ROUTE], "POST", f"{parts.path}?{parts.query}", headers=all_headers, body=_bytes(body), now=now
    )
    if event is None:
        raise ValueError(f"callback_url: must end in /callbacks/kling/<job_id> (got {callback_url!r})")
    return event


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def http_response(result: Any) -> HttpResponse:
    """What API Gateway answers for a payload-2.0 function result (a dict with statusCode, or any JSON value)."""
    if not isinstance(result, Mapping) or "statusCode" not in result:
        return HttpResponse(200, [("content-type", "application/json")], json.dumps(result).encode())
    raw_body = result.get("body") or ""
    body = base64.b64decode(raw_body) if result.get("isBase64Encoded") else str(raw_body).encode()
    headers = [(str(name).lower(), str(value)) for name, value in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((str(name).lower(), str(value)) for value in values)
    headers.extend(("set-cookie", str(cookie)) for cookie in result.get("cookies") or [])
    return HttpResponse(int(result["statusCode"]), headers, body)


def _encoded_body(body: bytes, content_type: str) -> dict[str, Any]:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if _TEXT_TYPES.match(media_type):
        try:
            return {"body": body.decode(), "isBase64Encoded": False}
        except UnicodeDecodeError:
            pass
    return {"body": base64.b64encode(body).decode(), "isBase64Encoded": True}


def _pairs(headers: Headers) -> list[tuple[str, str]]:
    return list(headers.items()) if isinstance(headers, Mapping) else list(headers)


def _joined(pairs: Iterable[tuple[str, str]], *, lower: bool = False) -> dict[str, str]:
    joined: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower() if lower else name
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    return joined


def _bytes(body: bytes | str) -> bytes:
    return body.encode() if isinstance(body, str) else body
