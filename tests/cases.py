"""Shared job tables: invalid jobs that each break exactly one rule, bodies that are not jobs, and valid examples.

Every job is complete (it has a `job_id`, unique in its table) and small enough for one SQS message
(at most 256 KiB), so it can be sent through the real pipeline. The one rule a queue message cannot carry, an
image over 10 MB, is tested on the model directly (tests/unit/test_job_model.py, tests/unit/test_images.py).
"""

from __future__ import annotations

import base64
from typing import Any

from devstack.imagegen import image_bytes, jpeg_bytes, png_bytes

PROMPT = "a red fox in fresh snow, morning light"
BIG_ELEMENT_ID = 829836802793406551
MAX_ELEMENT_ID = 2**63 - 1
_OMIT = object()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PNG_300 = b64(png_bytes(300, 300))
JPEG_EXIF_750_BY_300 = b64(jpeg_bytes(750, 300, exif=True))
PNG_300_BY_750 = b64(png_bytes(300, 750))


def _job(**fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"prompt": PROMPT, **fields}
    return {name: value for name, value in job.items() if value is not _OMIT}


def _elements(count: int) -> list[dict[str, int]]:
    return [{"element_id": BIG_ELEMENT_ID + i} for i in range(count)]


def _case(case_id: str, expected: str, **fields: Any) -> tuple[str, dict[str, Any], str]:
    return case_id, _job(**{"job_id": f"invalid-{case_id}", **fields}), expected


S3_IMAGE = {"bucket": "kling-input", "key": "uploads/reference.png"}

# (case id, job, a substring of the one problem it must be rejected with)
INVALID_JOB_CASES: list[tuple[str, dict[str, Any], str]] = [
    # prompt
    _case("prompt-missing", "prompt: is required", prompt=_OMIT),
    _case("prompt-empty", "prompt: must not be empty", prompt=""),
    _case("prompt-blank", 'prompt: must not be blank (got "  \\n ")', prompt="  \n "),
    _case("prompt-2501", "prompt: must be at most 2500 characters (got 2501)", prompt="p" * 2501),
    _case("prompt-not-string", "prompt: must be a string (got 42)", prompt=42),
    # negative_prompt
    _case(
        "negative-prompt-2501",
        "negative_prompt: must be at most 2500 characters (got 2501)",
        negative_prompt="n" * 2501,
    ),
    _case("negative-prompt-empty", "negative_prompt: must not be empty", negative_prompt=""),
    _case(
        "negative-prompt-with-image",
        "negative_prompt: not allowed when an image is given",
        negative_prompt="blur",
        image=PNG_300,
    ),
    _case(
        "negative-prompt-with-image-s3",
        "negative_prompt: not allowed when an image is given",
        negative_prompt="blur",
        image_s3=S3_IMAGE,
    ),
    # image
    _case(
        "image-data-url",
        'image: must be plain base64 without a "data:...;base64," prefix',
        image=f"data:image/png;base64,{PNG_300}",
    ),
    _case(
        "image-ftp-url",
        'image: must be an http(s) URL or base64 image data (got "ftp://',
        image="ftp://example.com/ref.png",
    ),
    _case("image-url-no-host", "image: must be an http(s) URL or base64 image data", image="https:///ref.png"),
    _case("image-base64-garbage", "image: must be an http(s) URL or valid base64 image data", image="not*base64!"),
    _case("image-base64-bad-padding", "image: must be an http(s) URL or valid base64 image data", image=PNG_300[:-1]),
    _case("image-base64-line-breaks", "no line breaks or spaces", image=PNG_300[:76] + "\n" + PNG_300[76:]),
    _case("image-not-an-image", "image: is not a readable image", image=b64(b"just some text, not pixels")),
    _case("image-empty", "image: must not be empty", image=""),
    _case(
        "image-299x300",
        "image: width and height must each be at least 300 px (got 299x300)",
        image=b64(png_bytes(299, 300)),
    ),
    _case(
        "image-300x299",
        "image: width and height must each be at least 300 px (got 300x299)",
        image=b64(png_bytes(300, 299)),
    ),
    _case(
        "image-780x300",
        "image: aspect ratio must be between 1:2.5 and 2.5:1 (got 780x300)",
        image=b64(png_bytes(780, 300)),
    ),
    _case(
        "image-751x300",
        "image: aspect ratio must be between 1:2.5 and 2.5:1 (got 751x300)",
        image=b64(jpeg_bytes(751, 300)),
    ),
    _case(
        "image-300x780",
        "image: aspect ratio must be between 1:2.5 and 2.5:1 (got 300x780)",
        image=b64(png_bytes(300, 780)),
    ),
    _case("image-gif", "image: must be a PNG or JPEG image (got GIF)", image=b64(image_bytes(400, 400, "gif"))),
    _case("image-not-string", "image: must be a string (got object)", image={"url": "https://example.com/a.png"}),
    _case("image-and-image-s3", "image_s3: not allowed together with image", image=PNG_300, image_s3=S3_IMAGE),
    # image_s3
    _case(
        "image-s3-bucket-name",
        "image_s3.bucket: must be an S3 bucket name",
        image_s3={"bucket": "Kling_Input", "key": "k"},
    ),
    _case("image-s3-key-missing", "image_s3.key: is required", image_s3={"bucket": "kling-input"}),
    _case("image-s3-key-empty", "image_s3.key: must not be empty", image_s3={"bucket": "kling-input", "key": ""}),
    _case(
        "image-s3-unknown-field", "image_s3.region: is not a known field", image_s3={**S3_IMAGE, "region": "eu-west-1"}
    ),
    _case(
        "image-s3-not-object",
        'image_s3: must be an object (got "s3://kling-input/a.png")',
        image_s3="s3://kling-input/a.png",
    ),
    # reference parameters
    _case("image-reference-without-image", "image_reference: requires an image", image_reference="subject"),
    _case(
        "image-reference-unknown",
        'image_reference: must be one of subject or face (got "style")',
        image=PNG_300,
        image_reference="style",
    ),
    _case("image-fidelity-without-image", "image_fidelity: requires an image", image_fidelity=0.5),
    _case("human-fidelity-without-image", "human_fidelity: requires an image", human_fidelity=0.5),
    _case(
        "image-fidelity-below-0",
        "image_fidelity: must be between 0 and 1 (got -0.01)",
        image=PNG_300,
        image_fidelity=-0.01,
    ),
    _case(
        "image-fidelity-above-1",
        "image_fidelity: must be between 0 and 1 (got 1.01)",
        image=PNG_300,
        image_fidelity=1.01,
    ),
    _case(
        "human-fidelity-below-0",
        "human_fidelity: must be between 0 and 1 (got -0.01)",
        image=PNG_300,
        human_fidelity=-0.01,
    ),
    _case(
        "human-fidelity-above-1",
        "human_fidelity: must be between 0 and 1 (got 1.01)",
        image=PNG_300,
        human_fidelity=1.01,
    ),
    _case("image-fidelity-string", 'image_fidelity: must be a number (got "0.5")', image=PNG_300, image_fidelity="0.5"),
    _case("human-fidelity-bool", "human_fidelity: must be a number (got true)", image=PNG_300, human_fidelity=True),
    # element_list
    _case(
        "elements-11",
        "element_list: elements plus reference images must be at most 10 (got 11 elements)",
        element_list=_elements(11),
    ),
    _case(
        "elements-10-with-image", "at most 10 (got 10 elements + 1 image)", image=PNG_300, element_list=_elements(10)
    ),
    _case(
        "elements-10-with-image-s3",
        "at most 10 (got 10 elements + 1 image)",
        image_s3=S3_IMAGE,
        element_list=_elements(10),
    ),
    _case("elements-empty", "element_list: must not be empty", element_list=[]),
    _case("elements-not-list", "element_list: must be a list (got object)", element_list={"element_id": 1}),
    _case("element-not-object", "element_list[0]: must be an object (got 12)", element_list=[12]),
    _case(
        "element-id-string",
        'element_list[1].element_id: must be an integer (got "12")',
        element_list=[{"element_id": 1}, {"element_id": "12"}],
    ),
    _case(
        "element-id-bool",
        "element_list[0].element_id: must be an integer (got true)",
        element_list=[{"element_id": True}],
    ),
    _case(
        "element-id-float",
        "element_list[0].element_id: must be an integer (got 1.5)",
        element_list=[{"element_id": 1.5}],
    ),
    _case(
        "element-id-zero",
        "element_list[0].element_id: must be between 1 and 9223372036854775807 (got 0)",
        element_list=[{"element_id": 0}],
    ),
    _case(
        "element-id-2-pow-63",
        "must be between 1 and 9223372036854775807 (got 9223372036854775808)",
        element_list=[{"element_id": MAX_ELEMENT_ID + 1}],
    ),
    _case("element-id-missing", "element_list[0].element_id: is required", element_list=[{}]),
    _case(
        "element-unknown-field",
        "element_list[0].weight: is not a known field",
        element_list=[{"element_id": 1, "weight": 2}],
    ),
    # resolution, n, aspect_ratio, watermark_info, model_name
    _case("resolution-4k", 'resolution: must be one of 1k or 2k (got "4k")', resolution="4k"),
    _case("resolution-upper-case", 'resolution: must be one of 1k or 2k (got "2K")', resolution="2K"),
    _case("n-0", "n: must be between 1 and 9 (got 0)", n=0),
    _case("n-10", "n: must be between 1 and 9 (got 10)", n=10),
    _case("n-12", "n: must be between 1 and 9 (got 12)", n=12),
    _case("n-true", "n: must be an integer (got true)", n=True),
    _case("n-2.5", "n: must be an integer (got 2.5)", n=2.5),
    _case("n-2.0", "n: must be an integer (got 2.0)", n=2.0),
    _case("n-string", 'n: must be an integer (got "3")', n="3"),
    _case(
        "aspect-ratio-5-4",
        'aspect_ratio: must be one of 1:1, 16:9, 4:3, 3:2, 2:3, 3:4, 9:16 or 21:9 (got "5:4")',
        aspect_ratio="5:4",
    ),
    _case("aspect-ratio-slash", "aspect_ratio: must be one of", aspect_ratio="16/9"),
    _case("watermark-not-object", "watermark_info: must be an object (got true)", watermark_info=True),
    _case(
        "watermark-enabled-string",
        'watermark_info.enabled: must be true or false (got "yes")',
        watermark_info={"enabled": "yes"},
    ),
    _case("watermark-enabled-missing", "watermark_info.enabled: is required", watermark_info={}),
    _case(
        "watermark-unknown-field",
        "watermark_info.position: is not a known field",
        watermark_info={"enabled": True, "position": "tl"},
    ),
    _case(
        "model-name-other-vendor",
        'model_name: must be a Kling model name like "kling-v3" (got "dall-e-3")',
        model_name="dall-e-3",
    ),
    _case("model-name-upper-case", "model_name: must be a Kling model name", model_name="Kling-V3"),
    # job_id
    _case("job-id-65", "job_id: must be at most 64 characters (got 65)", job_id="j" * 65),
    _case("job-id-space", "job_id: may only contain letters, digits, '_', '.' and '-' (got \"job 1\")", job_id="job 1"),
    _case("job-id-slash", "job_id: may only contain letters, digits", job_id="jobs/1"),
    _case("job-id-empty", "job_id: must not be empty", job_id=""),
    _case("job-id-number", "job_id: must be a string (got 17)", job_id=17),
    # Regression (hardening #9): dot segments vanish from the callback URL and climb out of the S3 prefix.
    _case("job-id-dot", 'job_id: must not be "." or ".."', job_id="."),
    _case("job-id-dot-dot", 'job_id: must not be "." or ".."', job_id=".."),
    # fields that belong to the pipeline, unknown fields
    _case(
        "callback-url",
        "callback_url: is set by the pipeline, not by a job: remove it",
        callback_url="https://evil.example/cb",
    ),
    _case(
        "external-task-id", "external_task_id: is set by the pipeline, not by a job: remove it", external_task_id="x-1"
    ),
    _case("unknown-field", "colour: is not a job field", colour="red"),
    _case("unknown-field-typo", "aspectRatio: is not a job field (did you mean aspect_ratio?)", aspectRatio="1:1"),
    # metadata
    _case(
        "metadata-33-keys", "metadata: must have at most 32 keys (got 33)", metadata={f"k{i}": "v" for i in range(33)}
    ),
    _case("metadata-key-65", "metadata: key must be at most 64 characters (got 65)", metadata={"k" * 65: "v"}),
    _case("metadata-key-empty", "metadata: key must not be empty", metadata={"": "v"}),
    _case(
        "metadata-value-513", "metadata.note: must be at most 512 characters (got 513)", metadata={"note": "v" * 513}
    ),
    _case("metadata-value-number", "metadata.batch: must be a string (got 7)", metadata={"batch": 7}),
    _case("metadata-value-nested", "metadata.owner: must be a string (got object)", metadata={"owner": {"name": "x"}}),
    _case("metadata-not-object", "metadata: must be an object (got list)", metadata=["a", "b"]),
]

# (case id, raw message body, the one problem's substring): bodies that are not a job object at all.
INVALID_BODY_CASES: list[tuple[str, str, str]] = [
    ("not-json", "prompt=a fox", "body: not valid JSON (Expecting value: line 1 column 1 (char 0))"),
    ("empty", "", "body: not valid JSON"),
    ("truncated", '{"prompt": "a fox"', "body: not valid JSON"),
    (
        "nan",
        '{"job_id": "nan-1", "prompt": "a fox", "image_fidelity": NaN}',
        "body: not valid JSON (NaN is not allowed)",
    ),
    ("array", '[{"prompt": "a fox"}]', "body: must be a JSON object (got list)"),
    ("string", '"a fox"', 'body: must be a JSON object (got "a fox")'),
    ("number", "42", "body: must be a JSON object (got 42)"),
    ("null", "null", "body: must be a JSON object (got null)"),
]

# (example id, job) that the model accepts, at and inside every limit. The URL image is not fetched by the
# pipeline (Kling fetches it); image_s3 jobs need an uploaded object and are left to the ingest tests.
VALID_JOB_EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("text-minimal", {"job_id": "valid-text-minimal", "prompt": PROMPT}),
    (
        "text-every-field",
        {
            "job_id": "valid-text-every-field",
            "model_name": "kling-v3",
            "prompt": PROMPT,
            "negative_prompt": "blurry, text, watermark",
            "element_list": [{"element_id": BIG_ELEMENT_ID}, {"element_id": MAX_ELEMENT_ID}, {"element_id": 1}],
            "resolution": "2k",
            "n": 9,
            "aspect_ratio": "21:9",
            "watermark_info": {"enabled": True},
            "metadata": {"team": "design", "ticket": "KP-42"},
        },
    ),
    (
        "text-at-limits",
        {
            "job_id": "v" * 64,
            "model_name": "kling-v2-1",
            "prompt": "p" * 2500,
            "negative_prompt": "n" * 2500,
            "element_list": _elements(10),
            "resolution": "1k",
            "n": 1,
            "aspect_ratio": "9:16",
            "watermark_info": {"enabled": False},
            "metadata": {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(32)},
        },
    ),
    (
        "image-png-300x300",
        {
            "job_id": "valid-image-png-300x300",
            "prompt": PROMPT,
            "image": PNG_300,
            "image_reference": "subject",
            "image_fidelity": 0,
            "human_fidelity": 1,
            "n": 2,
            "aspect_ratio": "1:1",
        },
    ),
    (
        "image-jpeg-exif-750x300",
        {
            "job_id": "valid-image-jpeg-exif-750x300",
            "prompt": PROMPT,
            "image": JPEG_EXIF_750_BY_300,
            "image_reference": "face",
            "image_fidelity": 1.0,
            "human_fidelity": 0.0,
            "element_list": _elements(9),
            "aspect_ratio": "21:9",
        },
    ),
    (
        "image-png-300x750",
        {"job_id": "valid-image-png-300x750", "prompt": PROMPT, "image": PNG_300_BY_750, "aspect_ratio": "2:3"},
    ),
    (
        "image-url-https",
        {"job_id": "valid-image-url-https", "prompt": PROMPT, "image": "https://images.example.com/ref.png"},
    ),
    (
        "image-url-http",
        {"job_id": "valid-image-url-http", "prompt": PROMPT, "image": "http://images.example.com/ref.jpg"},
    ),
]
