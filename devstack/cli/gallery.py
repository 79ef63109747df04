"""A self-contained HTML page of recent jobs: thumbnails, prompt and status, for a person to look at."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from string import Template

from PIL import Image, UnidentifiedImageError

from devstack.cli.views import age, prompt_of
from kling_pipeline.contract.record import JobRecord

THUMBNAIL_PX = 384

# Reads an object's bytes: (bucket or None for the images bucket, key) -> bytes.
ReadObject = Callable[[str | None, str], bytes]


def _template() -> Template:
    return Template(resources.files("devstack.cli").joinpath("assets/gallery.html").read_text(encoding="utf-8"))


def thumbnail_data_uri(data: bytes, size: int = THUMBNAIL_PX) -> tuple[str, str] | None:
    """A downscaled copy as a `data:` URI plus a caption (`512x512 PNG, 12 KB`); None if not an image."""
    try:
        with Image.open(io.BytesIO(data)) as picture:
            original_format = picture.format or "?"
            width, height = picture.size
            picture.thumbnail((size, size))
            buffer = io.BytesIO()
            if original_format == "JPEG":
                picture.convert("RGB").save(buffer, format="JPEG", quality=85)
                mime = "image/jpeg"
            else:
                picture.save(buffer, format="PNG", optimize=True)
                mime = "image/png"
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"data:{mime};base64,{encoded}", f"{width}x{height} {original_format}, {_kilobytes(len(data))}"


def render_gallery(records: Sequence[JobRecord], read_object: ReadObject, *, subtitle: str = "") -> str:
    counts = Counter(record.status.value for record in records)
    count_badges = "".join(
        f'<span class="badge {html.escape(status)}">{number} {html.escape(status)}</span>'
        for status, number in sorted(counts.items())
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    cards = "\n".join(_card(record, read_object) for record in records) or '<p class="none">No jobs yet.</p>'
    return _template().substitute(
        title="kling-pipeline gallery",
        subtitle=html.escape(f"{len(records)} job(s), generated {generated}" + (f" · {subtitle}" if subtitle else "")),
        counts=count_badges,
        cards=cards,
    )


def write_gallery(path: Path, records: Sequence[JobRecord], read_object: ReadObject, *, subtitle: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_gallery(records, read_object, subtitle=subtitle), encoding="utf-8")
    return path


def _card(record: JobRecord, read_object: ReadObject) -> str:
    status = record.status.value
    prompt = prompt_of(record)
    parts = [
        f'<section class="job {html.escape(status)}" data-job-id="{html.escape(record.job_id)}">',
        '<div class="head">',
        f'<span class="id">{html.escape(record.job_id)}</span>',
        f'<span class="badge {html.escape(status)}">{html.escape(status)}</span>',
        f'<span class="badge">{html.escape(record.source)}</span>',
        f'<span class="meta">{html.escape(age(record.created_at))} ago'
        + (f" · task {html.escape(record.kling_task_id)}" if record.kling_task_id else "")
        + (f' · <span class="units">{record.units:g} units</span>' if record.units is not None else "")
        + "</span>",
        "</div>",
    ]
    if prompt:
        parts.append(f'<p class="prompt">{html.escape(prompt)}</p>')
    if record.error:
        code, message = html.escape(str(record.error.code)), html.escape(record.error.message)
        parts.append(f'<div class="error"><code>{code}</code> {message}</div>')
    figures = [*_input_figure(record, read_object), *_result_figures(record, read_object)]
    if figures:
        parts.append('<div class="images">' + "".join(figures) + "</div>")
    elif not record.status.is_final:
        parts.append('<p class="none">in progress: no images yet</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _input_figure(record: JobRecord, read_object: ReadObject) -> list[str]:
    """The uploaded source image of an image-to-image job, when the record names it."""
    source = (record.request or {}).get("image_s3")
    if not isinstance(source, dict) or not source.get("key"):
        return []
    return _figure(read_object, source.get("bucket"), str(source["key"]), "input", css="input")


def _result_figures(record: JobRecord, read_object: ReadObject) -> list[str]:
    figures: list[str] = []
    for image in record.images or []:
        figures += _figure(read_object, None, image.s3_key, f"#{image.index}")
    return figures


def _figure(read_object: ReadObject, bucket: str | None, key: str, label: str, css: str = "") -> list[str]:
    try:
        thumbnail = thumbnail_data_uri(read_object(bucket, key))
    except Exception:
        thumbnail = None
    if thumbnail is None:
        return [f'<figure><p class="none">{html.escape(label)}: cannot be shown ({html.escape(key)})</p></figure>']
    uri, caption = thumbnail
    return [
        f'<figure class="{css}"><img src="{uri}" alt="{html.escape(label)} {html.escape(key)}" loading="eager">'
        f"<figcaption>{html.escape(label)} · {html.escape(caption)}</figcaption></figure>"
    ]


def _kilobytes(size: int) -> str:
    return f"{size / 1024:.0f} KB" if size >= 1024 else f"{size} B"
