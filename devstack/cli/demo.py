"""`make demo`: start the local stack, run a text-to-image job through SQS, an image-to-image job through an
upload and a small batch (a JSON Lines manifest with one bad line, followed by its progress bar), save the
images, the batch's results and a gallery under ./out/, print a summary and stop the stack. The text job has a
`notify_url` on a local receiver, which verifies its signed notification with `standardwebhooks`."""

from __future__ import annotations

import argparse
import json
import math
import secrets
import shutil
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from devstack.cli.batch_commands import summary as batch_summary
from devstack.cli.batch_commands import watch_batch
from devstack.cli.batches import Batches
from devstack.cli.gallery import write_gallery
from devstack.cli.jobs import Jobs, object_metadata
from devstack.cli.progress import watch
from devstack.cli.receiver import Delivery, NotificationReceiver, summary
from devstack.cli.views import status_text
from devstack.stack.control import spawn_stack, stop_process, wait_ready
from devstack.stack.iam_proof import denials, report_path
from devstack.stack.state import pid_alive
from devstack.stack.target import Target, local_target
from kling_pipeline.contract.batch import BatchStatus
from kling_pipeline.contract.record import JobRecord
from kling_pipeline.contract.status import JobStatus

# Three product shots and one line the pipeline refuses (n=10), to show a per-line error in the results.
BATCH_LINES = (
    {"prompt": "a ceramic teapot on white, studio light", "aspect_ratio": "1:1"},
    {"prompt": "the same teapot, lid open, steam rising", "aspect_ratio": "1:1"},
    {"prompt": "too many images of a teapot", "n": 10},
    {"prompt": "the teapot beside two cups, top view", "aspect_ratio": "1:1"},
)
TEXT_PROMPT = "a lighthouse on a basalt cliff at dusk, warm windows, long exposure sea, cinematic"
UPLOAD_PROMPT = "the same hills in watercolour, soft morning light"


def source_image(path: Path, size: tuple[int, int] = (768, 512)) -> Path:
    """A small landscape (sky gradient, sun, hills) to start the image-to-image job from."""
    width, height = size
    picture = Image.new("RGB", size)
    draw = ImageDraw.Draw(picture)
    for y in range(height):
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(40 + 200 * t), int(90 + 90 * t), int(200 - 80 * t)))
    draw.ellipse([width * 0.62, height * 0.16, width * 0.78, height * 0.40], fill=(255, 214, 120))
    for layer, (shade, amplitude, base) in enumerate([((70, 120, 90), 40, 0.62), ((40, 85, 60), 55, 0.75)]):
        points = [
            (x, height * base + amplitude * math.sin(x / (90 + 40 * layer) + layer)) for x in range(0, width + 8, 8)
        ]
        draw.polygon([(0, height), *points, (width, height)], fill=shade)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path


def summary_table(records: dict[str, JobRecord | None], entries: dict[str, str], saved: dict[str, list[Path]]) -> Table:
    table = Table(title="demo summary")
    table.add_column("job")
    table.add_column("entry")
    table.add_column("status")
    table.add_column("images", justify="right")
    table.add_column("saved to / error", overflow="fold")
    for job_id, record in records.items():
        if record is None:
            table.add_row(job_id, entries[job_id], status_text(None), "0", "")
            continue
        if record.error:
            detail = f"{record.error.code}: {record.error.message}"
        else:
            files = saved.get(job_id, [])
            detail = f"{files[0].parent}/ ({len(files)} file(s))" if files else ""
        table.add_row(job_id, entries[job_id], status_text(record.status), str(len(record.images or [])), detail)
    return table


DEMO_OVERRIDES = ["--batching-window=0"]


def run_demo(out: Path, timeout: float, console: Console) -> bool:
    started = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    work = Path(".devstack") / "demo"
    state_path = (work / "state.json").resolve()
    # The one override of the template: the submit mapping's 5 s batching window would make the demo wait for
    # batches that never fill (two jobs); the stack's log says so at start.
    process = spawn_stack(state_path, work / "stack.log", DEMO_OVERRIDES)
    receiver: NotificationReceiver | None = None
    try:
        with console.status("starting the local stack (moto, Kling simulator, handlers)"):
            wait_ready(state_path, process)
        console.print(
            f"local stack up in {time.monotonic() - started:.1f}s (pid {process.pid}, log {work / 'stack.log'})"
        )
        target = local_target(state_path)
        jobs = Jobs(target)
        receiver = start_receiver(target)
        tag = secrets.token_hex(3)
        text = {
            "job_id": f"t2i-{tag}",
            "prompt": TEXT_PROMPT,
            "n": 4,
            "aspect_ratio": "1:1",
            "notify_url": receiver.url,
        }
        text_job = jobs.submit(text).job_id
        console.print(f"text-to-image: queued [bold]{text_job}[/] on the jobs queue (n=4, notify_url {receiver.url})")
        image_job = f"i2i-{tag}"
        upload_job = {
            "job_id": image_job,
            "prompt": UPLOAD_PROMPT,
            "n": 2,
            "aspect_ratio": "3:2",
            "image_fidelity": 0.6,
        }
        uploaded = jobs.upload(source_image(out / "inputs" / "hills.png"), object_metadata(upload_job))
        console.print(f"image-to-image: uploaded s3://{uploaded.bucket}/{uploaded.key} as job [bold]{image_job}[/]")
        records = watch(jobs, [text_job, image_job], console, timeout=timeout)
        notified = notification_of(receiver, console)
        saved = {
            job_id: jobs.fetch(record, out / job_id)
            for job_id, record in records.items()
            if record is not None and record.images
        }
        batch_done = run_batch(Batches(jobs.target), out, tag, timeout, console)
        gallery = write_gallery(
            out / "gallery.html",
            jobs.recent(limit=None),
            lambda bucket, key: jobs.image(key, bucket),
            subtitle="make demo",
        )
        console.print(summary_table(records, {text_job: "SQS", image_job: "S3 upload"}, saved))
        console.print(f"gallery: {gallery} · images: {sum(len(paths) for paths in saved.values())} file(s) in {out}/")
    finally:
        if receiver is not None:
            receiver.stop()
        with console.status("stopping the local stack"):
            code = stop_process(process)
    if pid_alive(process.pid):
        console.print(f"[red]the stack (pid {process.pid}) is still running[/]")
        return False
    console.print(f"stack stopped (exit code {code}); demo took {time.monotonic() - started:.1f}s")
    denied = denials(state_path)
    for denial in denied:
        console.print(f"[red]IAM: {denial}[/]")
    console.print(f"IAM: {len(denied)} call(s) outside the functions' roles; see {report_path(state_path)}")
    return (
        not denied
        and notified is not None
        and notified.verified
        and batch_done
        and all(record is not None and record.status is JobStatus.SUCCEEDED for record in records.values())
    )


def start_receiver(target: Target) -> NotificationReceiver:
    """A receiver on loopback that verifies with the stack's generated notify secret."""
    assert target.notify_secret_arn is not None, "the stack has no NotifySecretArn output"
    secret = target.client("secretsmanager").get_secret_value(SecretId=target.notify_secret_arn)["SecretString"]
    return NotificationReceiver(secret).start()


def notification_of(receiver: NotificationReceiver, console: Console) -> Delivery | None:
    """The text job's notification, once it arrived (None if it did not within a few seconds)."""
    try:
        [delivery, *_] = receiver.wait_for(1, timeout=15)
    except AssertionError as missing:
        console.print(f"[red]notification: {missing}[/]")
        return None
    console.print(f"notification: {summary(delivery)}", soft_wrap=True)
    return delivery


def run_batch(batches: Batches, out: Path, tag: str, timeout: float, console: Console) -> bool:
    """A four-line batch through `batches/`, its progress bar, then its results file and images under out/batch/."""
    manifest = out / "inputs" / f"teapots-{tag}.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in BATCH_LINES))
    submitted = batches.submit(manifest)
    console.print(
        f"batch: uploaded s3://{batches.target.input_bucket}/{submitted.key} as [bold]{submitted.batch_id}[/]"
    )
    batch = watch_batch(batches, submitted.batch_id, console, timeout=timeout)
    if batch is None or batch.status is not BatchStatus.COMPLETED:
        console.print(f"[red]batch {submitted.batch_id} did not complete within {timeout:.0f}s[/]")
        return False
    path, images = batches.fetch_results(batch, out / "batch")
    console.print(batch_summary(batch, batches.target.images_bucket))
    console.print(f"batch results: {path} and {images} image(s) in folders by line")
    return batch.counts_by_status() == {"succeeded": len(BATCH_LINES) - 1, "failed": 1, "open": 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.cli.demo", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out"), help="where images and gallery.html go")
    parser.add_argument("--timeout", type=float, default=40.0, help="seconds to wait for the jobs")
    args = parser.parse_args(argv)
    return 0 if run_demo(args.out, args.timeout, Console()) else 1


if __name__ == "__main__":
    sys.exit(main())
