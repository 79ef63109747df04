"""Hypothesis strategies shared by the tests: job dicts the job model accepts."""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import strategies as st

from devstack.imagegen import jpeg_bytes, png_bytes

MAX_ELEMENT_ID = 2**63 - 1

# Built once: small real images at and inside Kling's limits (sides >= 300 px, aspect ratio up to 2.5:1).
BASE64_IMAGES: tuple[str, ...] = tuple(
    base64.b64encode(data).decode()
    for data in (
        png_bytes(300, 300),
        png_bytes(300, 750),
        jpeg_bytes(750, 300, exif=True),
        jpeg_bytes(640, 480),
    )
)
URL_IMAGES = (
    "https://images.example.com/reference.png",
    "http://cdn.example.org/a/b/face.jpg?size=large&v=2",
    "https://example.com:8443/path%20with%20escapes/x.jpeg",
)

job_ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(lambda job_id: job_id not in (".", ".."))
prompts = st.one_of(
    st.text(min_size=1, max_size=200).filter(lambda text: text.strip() != ""),
    st.integers(1, 2500).map(lambda length: "a fox " * (length // 6) + "x" * (length % 6 or 1)),
    st.just("p" * 2500),
)
negative_prompts = st.one_of(st.text(min_size=1, max_size=100), st.just("n" * 2500))
element_ids = st.one_of(
    st.integers(1, MAX_ELEMENT_ID),
    st.sampled_from([1, 2**53 + 1, 829836802793406551, MAX_ELEMENT_ID]),
)
fidelities = st.one_of(st.floats(0, 1), st.sampled_from([0, 1, 0.0, 1.0]))
metadata = st.dictionaries(
    st.text(min_size=1, max_size=64), st.one_of(st.text(max_size=40), st.just("v" * 512)), max_size=32
)
s3_locations = st.fixed_dictionaries(
    {
        "bucket": st.sampled_from(["input-bucket", "kling.uploads-123", "abc"]),
        "key": st.text(min_size=1, max_size=80),
    }
)


@st.composite
def valid_jobs(draw: st.DrawFn) -> dict[str, Any]:
    """A job dict the model accepts: text-only or with one image (base64, URL or image_s3), optional fields mixed."""
    job: dict[str, Any] = {"job_id": draw(job_ids), "prompt": draw(prompts)}
    image_kind = draw(st.sampled_from(["none", "base64", "url", "s3"]))
    if image_kind == "base64":
        job["image"] = draw(st.sampled_from(BASE64_IMAGES))
    elif image_kind == "url":
        job["image"] = draw(st.sampled_from(URL_IMAGES))
    elif image_kind == "s3":
        job["image_s3"] = draw(s3_locations)
    has_image = image_kind != "none"

    def maybe(name: str, values: st.SearchStrategy[Any]) -> None:
        if draw(st.booleans()):
            job[name] = draw(values)

    maybe("model_name", st.sampled_from(["kling-v3", "kling-v2-1", "kling-v2.1-beta"]))
    if has_image:
        maybe("image_reference", st.sampled_from(["subject", "face"]))
        maybe("image_fidelity", fidelities)
        maybe("human_fidelity", fidelities)
    else:
        maybe("negative_prompt", negative_prompts)
    max_elements = 10 - int(has_image)
    maybe(
        "element_list", st.lists(st.builds(lambda i: {"element_id": i}, element_ids), min_size=1, max_size=max_elements)
    )
    maybe("resolution", st.sampled_from(["1k", "2k"]))
    maybe("n", st.integers(1, 9))
    maybe("aspect_ratio", st.sampled_from(["1:1", "16:9", "4:3", "3:2", "2:3", "3:4", "9:16", "21:9"]))
    maybe("watermark_info", st.builds(lambda enabled: {"enabled": enabled}, st.booleans()))
    maybe("metadata", metadata)
    return job
