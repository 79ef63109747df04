"""Use case: a final job's notification delivered to its `notify_url`, signed, retried for a day."""
