"""Batches with the ports in memory: the manifest's lines read from chunks, the intake's per-line errors,
checkpoints, kills and repeats, and the batch counted and completed exactly once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kling_pipeline.batches.completion import COMPLETION_CLAIM_MS, BatchCompletion
from kling_pipeline.contract.batch import MAX_LINE_BYTES, BatchStatus, line_job_id
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus
from kling_pipeline.ingest.batch_intake import BatchIntake, IntakeContinuesError
from kling_pipeline.ingest.events import UploadedObject
from kling_pipeline.ingest.manifest import LineProblemError, csv_fields, csv_header, manifest_lines
from kling_pipeline.ports import BatchLineJob
from tests.batch_manifests import BAD_LINES, acceptance_csv, acceptance_jsonl
from tests.fakes import (
    MemoryBatchEvents,
    MemoryBatchQueue,
    MemoryBatchRecords,
    MemoryBatchResults,
    MemoryManifests,
    MemoryRecords,
)

BUCKET = "input"

# -- reading lines -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 5, 64, 10_000])
def test_lines_and_their_end_offsets_do_not_depend_on_the_chunks(chunk: int) -> None:
    data = b"\xef\xbb\xbfone\r\ntwo\n\nthree"
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    lines = list(manifest_lines(chunks, offset=0, line=0, max_line_bytes=100))
    assert [(line.number, line.end, line.data) for line in lines] == [
        (1, 8, b"one"),
        (2, 12, b"two"),
        (3, 13, b""),
        (4, 18, b"three"),
    ]


def test_reading_on_from_an_offset_numbers_on_from_its_line() -> None:
    data = b"one\ntwo\nthree\n"
    lines = list(manifest_lines([data[4:]], offset=4, line=1, max_line_bytes=100))
    assert [(line.number, line.end, line.data) for line in lines] == [(2, 8, b"two"), (3, 14, b"three")]


def test_a_line_over_the_limit_is_reported_without_being_kept() -> None:
    data = b"short\n" + b"x" * 50 + b"\nafter\n"
    lines = list(manifest_lines([data[i : i + 8] for i in range(0, len(data), 8)], offset=0, line=0, max_line_bytes=20))
    assert [(line.number, line.data) for line in lines] == [(1, b"short"), (2, None), (3, b"after")]
    assert lines[-1].end == len(data)


def test_csv_cells_become_typed_job_fields() -> None:
    header = csv_header(b"prompt,n,element_list,watermark_info,image_fidelity,metadata.sku,aspect_ratio")
    fields = csv_fields(b'"a fox, in snow",2,101; 102,true,0.5,SKU-1,', header, 4)
    assert fields == {
        "prompt": "a fox, in snow",
        "n": 2,
        "element_list": [{"element_id": 101}, {"element_id": 102}],
        "watermark_info": {"enabled": True},
        "image_fidelity": 0.5,
        "metadata": {"sku": "SKU-1"},
    }
    # What is not a number stays text, for the job model to name the field and its rule.
    assert csv_fields(b"a fox,four,,,,,", header, 5)["n"] == "four"


def test_a_csv_row_with_the_wrong_number_of_cells_names_its_line() -> None:
    with pytest.raises(LineProblemError, match="line 7: has 2 cells, the header row names 3 columns"):
        csv_fields(b"a,b", ["prompt", "n", "aspect_ratio"], 7)


# -- the intake --------------------------------------------------------------------------------------------------


class World:
    def __init__(self, *, checkpoint_every_calls: int = 1) -> None:
        self.clock = [1_000_000]
        self.completion_calls: list[str] = []
        self.results = MemoryBatchResults()
        self.events = MemoryBatchEvents()
        self.manifests = MemoryManifests()
        self.queue = MemoryBatchQueue()
        self.records = MemoryRecords(on_final=lambda record: self.completion.job_final(record))
        self.batches = MemoryBatchRecords(self.records)
        self.completion = BatchCompletion(self.batches, self.results, self.events, clock=lambda: self.clock[0])
        self.intake = self.intake_with(self.queue, checkpoint_every_calls=checkpoint_every_calls)

    def intake_with(self, queue: Any, *, checkpoint_every_calls: int = 1) -> BatchIntake:
        return BatchIntake(
            manifests=self.manifests,
            queue=queue,
            records=self.records,
            batches=self.batches,
            on_intake_done=self.completion.try_complete,
            clock=lambda: self.clock[0],
            checkpoint_every_calls=checkpoint_every_calls,
        )

    def put(self, key: str, data: bytes) -> UploadedObject:
        self.manifests.objects[key] = (data, {})
        stored = self.manifests.head(UploadedObject(BUCKET, key).ref)
        assert stored is not None
        return UploadedObject(BUCKET, key, etag=stored.etag, sequencer="0001")

    def finish_all(self, status: JobStatus = JobStatus.SUCCEEDED) -> None:
        """Each queued job recorded by submit and made final, as the webhook would."""
        for call in self.queue.calls:
            for batch_id, line, job in call:
                self.records.create(
                    JobRecord(job_id=job["job_id"], status=JobStatus.PENDING, batch_id=batch_id, batch_line=line)
                )
                self.records.advance(job["job_id"], status, changes={"units": 8})


def test_good_lines_are_queued_ten_to_a_call_and_bad_ones_fail_naming_line_and_field() -> None:
    world = World()
    result = world.intake.ingest(world.put("batches/c.jsonl", acceptance_jsonl(30)), time_left_ms=lambda: 60_000)
    assert (result.status, result.lines, result.failed_lines) == ("queued", 30, 5)
    assert [len(call) for call in world.queue.calls] == [10, 10, 5]
    assert world.queue.lines == [line for line in range(1, 31) if line not in BAD_LINES]
    for line, field in BAD_LINES.items():
        record = world.records.get(line_job_id(result.batch_id, line))
        assert record is not None and record.error is not None, line
        assert record.error.message.startswith(f"line {line}: "), record.error.message
        if field != "bad JSON":
            assert f"{field}:" in record.error.message
    batch = world.batches.get(result.batch_id)
    assert batch is not None and (batch.status, batch.total, batch.counts) == (BatchStatus.RUNNING, 30, {"failed": 5})


def test_a_batch_completes_once_with_every_line_in_order_whatever_the_duplicate_reports() -> None:
    world = World()
    result = world.intake.ingest(world.put("batches/c.csv", acceptance_csv(20)), time_left_ms=lambda: 60_000)
    world.finish_all()
    for job_id in [job["job_id"] for call in world.queue.calls for _, _, job in call]:
        record = world.records.get(job_id)
        assert record is not None
        world.completion.job_final(record)  # a duplicate callback's hook, a reconciler's re-announce
        world.completion.job_final(record.model_copy(update={"counted_in_batch": None}))
    batch = world.batches.get(result.batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED
    assert (batch.final, batch.counts) == (20, {"succeeded": 20})
    assert world.results.writes == [f"results/{result.batch_id}.jsonl"]
    assert [line.line for line in world.results.files[world.results.writes[0]]] == list(range(1, 21))
    assert [completed.batch_id for completed in world.events.completed] == [result.batch_id]


def test_an_event_that_failed_is_published_by_the_next_try_once_the_claim_lapsed() -> None:
    world = World()
    result = world.intake.ingest(world.put("batches/one.jsonl", b'{"prompt": "a fox"}\n'), time_left_ms=lambda: 60_000)
    world.events.fail_next = True
    world.finish_all()  # the hook's failure is left to the outbox (event_pending), as the adapter leaves it
    assert world.events.completed == []
    assert world.completion.try_complete(result.batch_id) is None  # the dead writer's claim still holds
    world.clock[0] += COMPLETION_CLAIM_MS + 1
    completed = world.completion.try_complete(result.batch_id)
    assert completed is not None and completed.status is BatchStatus.COMPLETED
    assert len(world.events.completed) == 1


def test_a_repeated_notification_is_the_same_batch_and_queues_nothing_again() -> None:
    world = World()
    upload = world.put("batches/c.jsonl", acceptance_jsonl(30))
    first = world.intake.ingest(upload, time_left_ms=lambda: 60_000)
    again = world.intake.ingest(upload, time_left_ms=lambda: 60_000)
    assert (again.batch_id, again.status) == (first.batch_id, "already")
    assert len(world.queue.lines) == 25


class Killed(BaseException):
    """The invocation dying: none of the intake's own clean-up runs."""


class DiesAt:
    def __init__(self, queue: MemoryBatchQueue, calls: int) -> None:
        self.queue, self.left = queue, calls

    def enqueue_lines(self, batch_id: str, lines: list[BatchLineJob]) -> None:
        if self.left == 0:
            raise Killed
        self.left -= 1
        self.queue.enqueue_lines(batch_id, lines)


@pytest.mark.parametrize("dies_at", [0, 1, 3, 6])
def test_a_kill_mid_file_then_the_retry_loses_and_doubles_no_line(dies_at: int) -> None:
    world = World(checkpoint_every_calls=2)
    upload = world.put("batches/k.jsonl", acceptance_jsonl(75))
    with pytest.raises(Killed):
        world.intake_with(DiesAt(world.queue, dies_at), checkpoint_every_calls=2).ingest(
            upload, time_left_ms=lambda: 60_000
        )
    world.clock[0] += 70_000  # the dead invocation's lease runs out with its time
    result = world.intake.ingest(upload, time_left_ms=lambda: 60_000)
    assert (result.status, result.lines) == ("queued", 75)
    good = [line for line in range(1, 76) if line not in BAD_LINES]
    assert sorted(set(world.queue.lines)) == good
    # Only the lines after the last checkpoint went twice: at most two calls' worth.
    assert len(world.queue.lines) - len(good) <= 2 * 10
    world.finish_all()
    batch = world.batches.get(result.batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED
    assert batch.counts == {"succeeded": len(good), "failed": len(BAD_LINES)}


def test_an_intake_out_of_time_checkpoints_and_raises_for_the_retry() -> None:
    world = World()
    upload = world.put("batches/t.jsonl", acceptance_jsonl(40))
    with pytest.raises(IntakeContinuesError, match="out of time"):
        world.intake.ingest(upload, time_left_ms=lambda: 5_000)
    (batch,) = world.batches.items.values()
    assert batch.intake_owner is None and batch.checkpoint.line > 0
    result = world.intake.ingest(upload, time_left_ms=lambda: 60_000)
    assert (result.status, result.lines) == ("queued", 40)
    assert sorted(set(world.queue.lines)) == [line for line in range(1, 41) if line not in BAD_LINES]
    assert len(world.queue.lines) == len(set(world.queue.lines))


def test_an_overlong_line_fails_and_the_next_goes_on() -> None:
    world = World()
    data = json.dumps({"prompt": "x" * (MAX_LINE_BYTES + 10)}).encode() + b'\n{"prompt": "a fox"}\n'
    world.manifests.chunk = 64 * 1024
    result = world.intake.ingest(world.put("batches/long.jsonl", data), time_left_ms=lambda: 60_000)
    assert (result.lines, result.failed_lines, world.queue.lines) == (2, 1, [2])
    record = world.records.get(line_job_id(result.batch_id, 1))
    assert record is not None and record.error is not None and "longer than" in record.error.message


def test_a_bad_line_naming_another_jobs_id_fails_under_its_own_id_and_the_batch_completes() -> None:
    world = World()
    other = JobRecord(job_id="job-taken", status=JobStatus.SUCCEEDED)
    world.records.create(other)
    data = b'{"job_id": "job-taken", "n": 10}\n{"prompt": "a fox"}\n'
    result = world.intake.ingest(world.put("batches/taken.jsonl", data), time_left_ms=lambda: 60_000)
    assert (result.lines, result.failed_lines, world.queue.lines) == (2, 1, [2])
    failed = world.records.get(line_job_id(result.batch_id, 1))
    assert failed is not None and failed.error is not None and failed.is_line(result.batch_id, 1)
    assert failed.error.message.startswith("line 1: job_id: job-taken is already the id of another job (a job of")
    assert "n: must be between 1 and 9" in failed.error.message
    assert world.records.get("job-taken") == other
    world.finish_all()
    batch = world.batches.get(result.batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED
    assert batch.counts == {"failed": 1, "succeeded": 1}


def test_an_object_that_is_no_manifest_or_is_gone_is_left_alone() -> None:
    world = World()
    ignored = world.intake.ingest(UploadedObject(BUCKET, "batches/notes.txt"), time_left_ms=lambda: 60_000)
    gone = world.intake.ingest(UploadedObject(BUCKET, "batches/gone.jsonl"), time_left_ms=lambda: 60_000)
    assert (ignored.status, gone.status) == ("ignored", "gone")
    assert world.batches.items == {}
