"""The local stack's state file: where its endpoints live, read by the CLI, the demo and the tests."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

STATE_ENV = "KLINGCTL_STATE"
DEFAULT_STATE_PATH = Path(".devstack") / "state.json"


def default_state_path() -> Path:
    """`$KLINGCTL_STATE`, else `.devstack/state.json` under the current directory."""
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_PATH)


class StateError(RuntimeError):
    """No usable state file: the stack is not up, or the file is from another version."""


@dataclass(frozen=True)
class StackState:
    pid: int
    stack_name: str  # the CloudFormation stack on moto that template.yaml was deployed as
    moto_endpoint: str
    simulator_url: str
    webhook_url: str
    table: str
    queue_url: str
    dlq_url: str
    uploads_queue_url: str  # the input bucket's ObjectCreated notifications, polled for the ingest function
    ingest_dlq_url: str  # notifications ingest failed on after its retries (the template's IngestDlq)
    input_bucket: str
    images_bucket: str
    region: str
    event_bus: str
    started_at: str

    def write(self, path: Path) -> None:
        """Write atomically, so a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(asdict(self), indent=2) + "\n")
        partial.replace(path)

    @classmethod
    def read(cls, path: Path) -> StackState:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise StateError(f"no local stack: {path} does not exist (start one with `klingctl stack up`)") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"{path}: not a readable state file ({exc})") from exc
        names = [field.name for field in fields(cls)]
        missing = [name for name in names if name not in raw]
        if missing:
            raise StateError(f"{path}: missing field(s) {', '.join(missing)}")
        return cls(**{name: raw[name] for name in names})

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an orphan may wait unreaped in a container)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state is the field after the parenthesised command name, which may itself hold spaces.
    return status.rsplit(")", 1)[-1].split()[0] != "Z"
