"""API Gateway HTTP API (payload 2.0) events as API Gateway builds them, and responses as it reads them."""

from __future__ import annotations

import base64
import json

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

from devstack.events.http_api import (
    event_for_request,
    http_api_event,
    http_response,
    kling_callback_event,
    match_route,
)
from kling_pipeline.contract.callback_tokens import CALLBACK_ROUTE


def test_a_callback_event_has_every_field_api_gateway_sends() -> None:
    body = '{"task_id":"t1","task_status":"succeed"}'
    event = kling_callback_event("https://hooks.example.test/callbacks/kling/job-1?token=abc", body, now=1_700_000_000)

    assert event["version"] == "2.0"
    assert event["routeKey"] == CALLBACK_ROUTE
    assert event["rawPath"] == "/callbacks/kling/job-1"
    assert event["rawQueryString"] == "token=abc"
    assert event["queryStringParameters"] == {"token": "abc"}
    assert event["pathParameters"] == {"job_id": "job-1"}
    assert event["body"] == body and event["isBase64Encoded"] is False
    assert event["headers"]["content-type"] == "application/json"
    assert event["headers"]["content-length"] == str(len(body))
    context = event["requestContext"]
    assert context["http"] == {
        "method": "POST",
        "path": "/callbacks/kling/job-1",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "kling-callback",
    }
    assert (context["routeKey"], context["stage"]) == (CALLBACK_ROUTE, "$default")
    assert context["time"] == "14/Nov/2023:22:13:20 +0000"
    assert context["timeEpoch"] == 1_700_000_000_000
    assert {"accountId", "apiId", "domainName", "domainPrefix", "requestId"} <= set(context)


def test_powertools_reads_the_event() -> None:
    event = APIGatewayProxyEventV2(kling_callback_event("https://h.test/callbacks/kling/job-1?token=abc", "{}"))
    assert event.path == "/callbacks/kling/job-1"
    assert event.get_query_string_value("token") == "abc"
    assert event.http_method == "POST"
    assert event.decoded_body == "{}"


def test_header_names_are_lower_cased_and_repeats_joined_with_commas() -> None:
    event = http_api_event("GET", "/x", headers=[("X-Thing", "a"), ("x-thing", "b"), ("Accept", "*/*")])
    assert event["headers"]["x-thing"] == "a,b"
    assert event["headers"]["accept"] == "*/*"
    assert all(name == name.lower() for name in event["headers"])


def test_repeated_query_parameters_are_joined_and_an_empty_query_leaves_the_key_out() -> None:
    assert http_api_event("GET", "/x", raw_query="a=1&a=2&b=%20")["queryStringParameters"] == {"a": "1,2", "b": " "}
    event = http_api_event("GET", "/x")
    assert "queryStringParameters" not in event and "body" not in event and "pathParameters" not in event
    assert event["rawQueryString"] == ""


def test_cookies_move_out_of_the_headers() -> None:
    event = http_api_event("GET", "/x", headers={"Cookie": "a=1; b=2"})
    assert event["cookies"] == ["a=1", "b=2"]
    assert "cookie" not in event["headers"]


@pytest.mark.parametrize(
    ("content_type", "encoded"),
    [
        ("application/json", False),
        ("text/plain; charset=utf-8", False),
        ("application/cloudevents+json", False),
        ("application/octet-stream", True),
        ("image/png", True),
        ("", True),
    ],
)
def test_bodies_other_than_text_arrive_base64_encoded(content_type: str, encoded: bool) -> None:
    event = http_api_event("POST", "/x", headers={"content-type": content_type}, body=b'{"a":1}')
    assert event["isBase64Encoded"] is encoded
    raw = base64.b64decode(event["body"]) if encoded else event["body"].encode()
    assert raw == b'{"a":1}'


def test_invalid_utf8_is_base64_encoded_even_for_text() -> None:
    event = http_api_event("POST", "/x", headers={"content-type": "application/json"}, body=b"\xff\xfe")
    assert event["isBase64Encoded"] is True


def test_routes_match_templates_and_decode_path_parameters() -> None:
    assert match_route([CALLBACK_ROUTE], "post", "/callbacks/kling/job%2E1") == (CALLBACK_ROUTE, {"job_id": "job.1"})
    assert match_route([CALLBACK_ROUTE], "GET", "/callbacks/kling/job-1") is None
    assert match_route([CALLBACK_ROUTE], "POST", "/callbacks/kling/job-1/extra") is None
    assert event_for_request([CALLBACK_ROUTE], "POST", "/elsewhere") is None


def test_a_callback_url_without_the_route_is_refused() -> None:
    with pytest.raises(ValueError, match="callback_url"):
        kling_callback_event("https://h.test/hooks/job-1?token=x", "{}")


def test_function_results_become_http_responses() -> None:
    plain = http_response({"statusCode": 401, "headers": {"Content-Type": "application/json"}, "body": '{"e":1}'})
    assert (plain.status, plain.headers, plain.body) == (401, [("content-type", "application/json")], b'{"e":1}')
    binary = http_response({"statusCode": 200, "body": base64.b64encode(b"\x89PNG").decode(), "isBase64Encoded": True})
    assert binary.body == b"\x89PNG"
    with_cookies = http_response({"statusCode": 204, "cookies": ["a=1"], "multiValueHeaders": {"X": ["1", "2"]}})
    assert ("set-cookie", "a=1") in with_cookies.headers and ("x", "2") in with_cookies.headers
    inferred = http_response({"ok": True})
    assert (inferred.status, json.loads(inferred.body)) == (200, {"ok": True})
