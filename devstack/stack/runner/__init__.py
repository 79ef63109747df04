"""Runs the pipeline's Lambda handlers in-process, fed the way AWS feeds them (SQS, S3, HTTP API, schedule)."""
