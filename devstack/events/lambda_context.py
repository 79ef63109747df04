"""A Lambda context object for invoking handlers outside Lambda (tests, the local stack)."""

from __future__ import annotations

import time
import uuid

from aws_lambda_powertools.utilities.typing import LambdaContext as PowertoolsLambdaContext

from devstack.events import ACCOUNT_ID, REGION


class LambdaContext(PowertoolsLambdaContext):
    """What Lambda passes as `context`: names, memory, request id, and a deadline `timeout_seconds` from now."""

    def __init__(
        self,
        function_name: str = "kling-pipeline",
        *,
        timeout_seconds: float = 60.0,
        memory_mb: int = 512,
        region: str = REGION,
        account_id: str = ACCOUNT_ID,
    ) -> None:
        self._function_name = function_name
        self._function_version = "$LATEST"
        self._invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self._memory_limit_in_mb = memory_mb
        self._aws_request_id = str(uuid.uuid4())
        self._log_group_name = f"/aws/lambda/{function_name}"
        self._log_stream_name = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self._tenant_id = None
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:  # type: ignore[override]  # an instance method, as in Lambda
        return max(0, int((self._deadline - time.monotonic()) * 1000))
