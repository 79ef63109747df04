"""Use case: a batch's jobs counted as they become final, and its results and event once all are."""
