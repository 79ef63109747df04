"""A batch moved forward by its jobs: each final job counted once, and the batch completed once all are.

Every function that makes a job final runs `job_final` (the jobs table's on-final hook, re-driven by the
reconciler's outbox when it failed), and the intake runs `try_complete` once it has read the whole manifest (the
last jobs may have finished first). The count and the job's `counted_in_batch` flag are one transaction, so no
duplicate callback or reconciler run counts a job twice. The writer that claims a complete batch writes
`results/{batch_id}.jsonl` (its jobs in line order) and publishes `Batch Completed`; a claim whose writer died
lapses, and the next `try_complete` (the outbox re-driving the job whose hook failed) writes it again, the same
file.
"""

from __future__ import annotations

from collections.abc import Callable

from aws_lambda_powertools import Logger

from kling_pipeline.contract.batch import BatchRecord, BatchStatus, ResultLine, results_key
from kling_pipeline.contract.clock import now_millis
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.ports import BatchEvents, BatchRecords, BatchResults

logger = Logger(child=True)

# How long the writer of a complete batch may take before another may write it: a results file of 100,000
# lines is read from the table and streamed to S3 well within it.
COMPLETION_CLAIM_MS = 5 * 60 * 1000


class BatchCompletion:
    def __init__(
        self,
        batches: BatchRecords,
        results: BatchResults,
        events: BatchEvents,
        *,
        clock: Callable[[], int] = now_millis,
    ) -> None:
        self._batches = batches
        self._results = results
        self._events = events
        self._clock = clock

    def job_final(self, record: JobRecord) -> None:
        """Count a final job in its batch (once), then complete the batch if it was the last."""
        if record.batch_id is None or not record.status.is_final:
            return
        if not record.counted_in_batch and self._batches.count_final(record):
            logger.debug("job counted in its batch", extra={"batch_id": record.batch_id})
        self.try_complete(record.batch_id)

    def try_complete(self, batch_id: str) -> BatchRecord | None:
        """Write the results and publish the event if every job is final and no live writer does it; the batch
        as completed, or None."""
        batch = self._batches.get(batch_id)
        if batch is None or batch.status is BatchStatus.COMPLETED or not batch.all_final:
            return None
        now = self._clock()
        claimed = self._batches.claim_completion(batch_id, now_ms=now, until_ms=now + COMPLETION_CLAIM_MS)
        if claimed is None:
            return None
        key = results_key(batch_id)
        self._results.write(key, (ResultLine.of(record) for record in self._batches.lines(batch_id)))
        # Published before the batch is marked completed: a failed publish leaves the claim to lapse and the
        # event to the next try (at least once, like the jobs' events), never lost.
        self._events.batch_completed(claimed.model_copy(update={"results_key": key}))
        completed = self._batches.complete(batch_id, key)
        if completed is None:
            return None
        logger.info("batch completed", extra={"batch_id": batch_id, "counts": completed.counts, "results": key})
        return completed
