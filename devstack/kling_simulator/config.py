"""How a simulator is set up: address, credentials, timing, callbacks, images, faults."""

from __future__ import annotations

import dataclasses
from typing import Literal

from devstack.kling_simulator.faults import Faults

SimImageFormat = Literal["png", "jpeg", "mixed"]


@dataclasses.dataclass
class SimulatorConfig:
    """Settings of one simulator. With no api_key and no access/secret key, any caller is let in."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port
    api_key: str | None = None  # accepted as `Authorization: Bearer <api_key>`
    access_key: str | None = None  # with secret_key: accept HS256 JWTs whose iss is access_key
    secret_key: str | None = None
    processing_delay: float = 0.05  # seconds from submitted to processing
    succeed_delay: float = 0.1  # seconds from processing to succeed/failed
    # Kling's tasks take unequal times: each task's succeed delay is drawn in succeed_delay x [1 - j, 1 + j].
    succeed_delay_jitter: float = 0.0
    auto_advance: bool = True  # False: tasks move only through advance()
    fail_rate: float = 0.0  # share of tasks that end failed (besides prompts holding FAIL_MARKER)
    fail_message: str = "Image pixel is invalid"
    max_concurrency: int | None = None  # slots (sum of n over unfinished tasks); over it: 1303
    units_per_image: float = 8.0  # what a succeeded task reports as final_unit_deduction, per image (kling-v3)
    callback_on_submit: bool = False  # also call back for the initial `submitted` state
    callback_wrapped: bool = False  # send {"code","message","request_id","data": task} instead of the task
    callback_timeout: float = 2.0
    webhook_secret: str | None = None  # whsec_...: sign callbacks the Standard Webhooks way
    public_base_url: str | None = None  # base of image URLs; default: the simulator's own base_url
    image_format: SimImageFormat = "png"  # mixed: png for even indexes, jpeg for odd
    image_width: int = 512
    image_height: int = 512
    image_noise: bool = False  # incompressible pixels (1700x1700 png ~ 8.7 MB)
    seed: int | None = None  # seeds fail_rate and the random faults
    faults: Faults = dataclasses.field(default_factory=Faults)

    def __post_init__(self) -> None:
        if bool(self.access_key) != bool(self.secret_key):
            raise ValueError("access_key/secret_key: give both or neither")
        if self.image_format not in ("png", "jpeg", "mixed"):
            raise ValueError(f"image_format: must be png, jpeg or mixed (got {self.image_format!r})")
        if not 0 <= self.fail_rate <= 1:
            raise ValueError(f"fail_rate: must be between 0 and 1 (got {self.fail_rate})")
        if not 0 <= self.succeed_delay_jitter <= 1:
            raise ValueError(f"succeed_delay_jitter: must be between 0 and 1 (got {self.succeed_delay_jitter})")
        if self.image_width < 1 or self.image_height < 1:
            raise ValueError(f"image size: must be positive (got {self.image_width}x{self.image_height})")
        if self.webhook_secret is not None and not self.webhook_secret.startswith("whsec_"):
            raise ValueError("webhook_secret: must start with whsec_")

    @property
    def auth_required(self) -> bool:
        return bool(self.api_key or self.access_key)
