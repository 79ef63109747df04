"""AWS event shapes, built the way AWS builds them, for tests and the local stack (SQS, S3, HTTP API, context)."""
