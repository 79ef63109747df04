"""The functions' metrics: one CloudWatch namespace for the whole pipeline."""

from __future__ import annotations

import os

from aws_lambda_powertools import Metrics

METRICS_NAMESPACE = "KlingPipeline"


def function_metrics(service: str | None = None) -> Metrics:
    """Metrics under POWERTOOLS_METRICS_NAMESPACE (the template sets it), `KlingPipeline` where it is unset."""
    return Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", METRICS_NAMESPACE), service=service)
