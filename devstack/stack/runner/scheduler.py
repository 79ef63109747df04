"""Scheduled functions on a timer, invoked with the event an EventBridge schedule rule sends."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from devstack.events import ACCOUNT_ID
from devstack.stack.runner.background import BackgroundLoop
from devstack.stack.runner.functions import LambdaFunction

logger = logging.getLogger("devstack.schedule")


def scheduled_event(rule_name: str, region: str) -> dict[str, Any]:
    """The `Scheduled Event` EventBridge delivers for a rate/cron rule."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/{rule_name}"],
        "detail": {},
    }


class Schedule(BackgroundLoop):
    """Invokes `function` every `interval` seconds (the first run one interval after start)."""

    def __init__(self, function: LambdaFunction, interval: float, *, rule_name: str, region: str) -> None:
        if interval <= 0:
            raise ValueError(f"interval: must be greater than 0 (got {interval})")
        super().__init__(f"schedule-{function.name}", pause=interval)
        self.function = function
        self.interval = interval
        self._rule_name = rule_name
        self._region = region
        self.runs = 0

    def _round(self) -> None:
        self.runs += 1
        self.function.invoke(scheduled_event(self._rule_name, self._region))

    def _round_failed(self) -> None:
        logger.warning("%s: scheduled run failed; next run in %.1fs", self.function.name, self.interval)
