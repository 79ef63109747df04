"""What a Kling image task costs, in Kling's units, before it runs: the estimate a budget reserves.

Source: Kling's published API pricing for image generation, as this project records it (the governor issue,
`../shared/reference/kling-api.md`): kling-v3 deducts 8 units per image at 1k and at 2k (about $0.028 an image
on the standard resource packs, so about $0.0035 a unit). The task's actual `final_unit_deduction` settles the
estimate once it ends. A model or resolution not listed is estimated at the dearest known price, so a budget
is never overspent by a guess that was too low.
"""

from __future__ import annotations

UNITS_PER_IMAGE: dict[tuple[str, str], float] = {
    ("kling-v3", "1k"): 8.0,
    ("kling-v3", "2k"): 8.0,
}
DEFAULT_RESOLUTION = "1k"
DOLLARS_PER_UNIT = 0.0035


def units_per_image(model_name: str, resolution: str | None) -> float:
    return UNITS_PER_IMAGE.get((model_name, resolution or DEFAULT_RESOLUTION), max(UNITS_PER_IMAGE.values()))


def estimate_units(model_name: str, resolution: str | None, images: int) -> float:
    """The units a task of `images` images is expected to deduct."""
    return units_per_image(model_name, resolution) * images


def dollars(units: float) -> float:
    return round(units * DOLLARS_PER_UNIT, 4)
