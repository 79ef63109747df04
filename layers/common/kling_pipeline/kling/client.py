"""HTTP client for Kling's image-generation API (relay form `/kling/v1/...` or official `/v1/...`).

It never retries on its own except once after 1003/1004 (Kling refused the token before doing anything,
so re-signing and sending again cannot create a task twice). Every other failure is raised, classified,
for the caller to decide: a blind retry of a create whose answer was lost can make a second task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import certifi

# urllib3, not requests: boto3 has loaded it already (botocore's HTTP), so the Kling client adds next to nothing
# to a cold start (requests and its charset detection and IDNA tables cost submit ~50 ms of import).
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
    SSLError,
)

from kling_pipeline.kling.auth import KlingAuth
from kling_pipeline.kling.errors import (
    NETWORK_BACKOFF,
    NOT_FOUND_CODE,
    KlingAmbiguousAnswerError,
    KlingAuthExpiredError,
    KlingPermanentError,
    KlingUnexpectedAnswerError,
    classify,
    envelope_code,
    network_error,
)
from kling_pipeline.kling.task import KlingTask, NotATaskError, parse_task

GENERATIONS_PATH = "/v1/images/generations"
POOL_SIZE = 16
MAX_PAGE_SIZE = 500
USER_AGENT = "kling-pipeline/0.1"


class KlingClient:
    """One Kling account behind one base URL; reuse an instance so connections are pooled."""

    def __init__(
        self,
        base_url: str,
        auth: KlingAuth,
        *,
        path_prefix: str = "/kling",
        connect_timeout: float = 3.05,
        read_timeout: float = 20.0,
        pool: urllib3.PoolManager | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https:// (got {base_url!r})")
        prefix = path_prefix.strip().strip("/")
        self._endpoint = base_url.rstrip("/") + (f"/{prefix}" if prefix else "") + GENERATIONS_PATH
        self._auth = auth
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._owns_pool = pool is None
        self._pool = pool if pool is not None else _pool()

    @property
    def endpoint(self) -> str:
        """The generations URL every call is made against."""
        return self._endpoint

    def create_task(self, body: Mapping[str, Any]) -> KlingTask:
        """Create a task from a complete create body.

        On KlingRetryableError without a `code` (timeout, lost connection) the task may exist:
        look it up with `find_task_by_external_id` before creating it again.
        """
        payload = json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        try:
            return _parsed(self._call("POST", self._endpoint, payload.encode()))
        except KlingUnexpectedAnswerError as exc:
            # Kling said yes but not what it made: the task may well exist (and is billed), so this is never
            # a reason to fail the job; the caller looks it up by external_task_id.
            raise KlingAmbiguousAnswerError(
                f"create answered without a usable task ({exc.message}); the task may exist",
                retry_after=NETWORK_BACKOFF,
                http_status=exc.http_status,
            ) from exc

    def get_task(self, task_id: str) -> KlingTask:
        """The task by Kling's task id or by our external task id (the path slot takes either)."""
        envelope = self._call("GET", f"{self._endpoint}/{_path_segment(task_id)}")
        return _parsed(envelope)

    def find_task_by_external_id(self, external_task_id: str) -> KlingTask | None:
        """The task created with this external_task_id, or None when Kling does not know it."""
        try:
            task = self.get_task(external_task_id)
        except KlingPermanentError as error:
            if error.code == NOT_FOUND_CODE or (error.code is None and error.http_status == 404):
                return None
            raise
        # The slot also matches Kling's own ids: a task that names another external id is not ours.
        if task.external_task_id is not None and task.external_task_id != external_task_id:
            return None
        return task

    def list_tasks(self, page: int = 1, page_size: int = 30) -> list[KlingTask]:
        """One page of the account's tasks, newest first as Kling orders them."""
        if page < 1:
            raise ValueError(f"page: must be at least 1 (got {page})")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size: must be between 1 and {MAX_PAGE_SIZE} (got {page_size})")
        query = urlencode({"pageNum": page, "pageSize": page_size})
        envelope = self._call("GET", f"{self._endpoint}?{query}")
        return [_parsed(item) for item in _task_list(envelope)]

    def close(self) -> None:
        """Release pooled connections (only those of a pool this client created)."""
        if self._owns_pool:
            self._pool.clear()

    def __enter__(self) -> KlingClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, url: str, body: bytes | None = None) -> Mapping[str, Any]:
        try:
            return self._send(method, url, body)
        except KlingAuthExpiredError:
            self._auth.refresh()
            return self._send(method, url, body)

    def _send(self, method: str, url: str, body: bytes | None) -> Mapping[str, Any]:
        headers = {
            **self._pool.headers,
            "Authorization": self._auth.authorization(),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            # retries=False: urllib3 must not resend anything on its own (a resent POST can create a second
            # task), and a redirect is an answer, not a place to send the body again.
            response = self._pool.request(
                method, url, body=body, headers=headers, timeout=self._timeout, retries=False, redirect=False
            )
        except NewConnectionError as exc:  # a refused or unresolvable connection (a ConnectTimeoutError too)
            raise network_error(f"connection failed: {exc}") from exc
        except ConnectTimeoutError as exc:
            raise network_error(f"no connection within {self._timeout.connect_timeout} s: {exc}") from exc
        except ReadTimeoutError as exc:
            raise network_error(f"no answer within {self._timeout.read_timeout} s: {exc}") from exc
        except (ProtocolError, SSLError, ProxyError) as exc:
            raise network_error(f"connection failed: {exc}") from exc
        except HTTPError as exc:
            raise KlingPermanentError(f"request could not be sent: {exc}") from exc

        envelope = _json_object(response.data)
        code = envelope_code(envelope)
        if 200 <= response.status < 300 and code in (0, None):
            if envelope is None:
                what = response.headers.get("Content-Type", "no content type")
                raise KlingUnexpectedAnswerError(
                    f"HTTP {response.status} answer is not a JSON object ({what})", http_status=response.status
                )
            return envelope
        raise classify(response.status, envelope, retry_after_header=response.headers.get("Retry-After"))


def _pool() -> urllib3.PoolManager:
    return urllib3.PoolManager(num_pools=4, maxsize=POOL_SIZE, ca_certs=certifi.where())


def _json_object(content: bytes) -> Mapping[str, Any] | None:
    """The body as a JSON object, or None. The stdlib parser keeps integers of any size exact."""
    try:
        parsed = json.loads(content)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _path_segment(task_id: str) -> str:
    if not task_id or not task_id.strip():
        raise ValueError("task_id: must not be empty")
    # "." and ".." are dot segments: they would address another path, and HTTP clients un-escape %2E, so
    # they cannot be sent safely. Raised as Kling's kind of refusal so callers treat it like any unknown id.
    if task_id in (".", ".."):
        raise KlingPermanentError(f"task_id: must not be '.' or '..' (got {task_id!r})")
    return quote(task_id, safe="")


def _parsed(item: Any) -> KlingTask:
    try:
        return parse_task(item)
    except NotATaskError as exc:
        raise KlingUnexpectedAnswerError(f"unexpected answer: {exc}") from exc


def _task_list(envelope: Mapping[str, Any]) -> list[Any]:
    data = envelope.get("data")
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):  # tolerate relays that page as {"list": [...], "total": n}
        for key in ("list", "items", "tasks", "records"):
            if isinstance(data.get(key), list):
                return list(data[key])
    if data is None:
        return []
    raise KlingPermanentError(f"unexpected answer: data: must be a list of tasks (got {type(data).__name__})")
