"""AWS event shapes, built the way AWS builds them, for tests and the local stack (SQS, S3, HTTP API, context).

Every event and ARN names one emulated account and region; they live here, below the local stack, so event
builders need nothing from the stack that uses them.
"""

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
