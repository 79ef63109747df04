"""A stand-in for Kling's image API: a real HTTP server with a task lifecycle, callbacks, hosted result
images and injectable faults. Used by tests and the local demo; never deployed."""

from devstack.kling_simulator.callbacks import CallbackDelivery
from devstack.kling_simulator.config import SimulatorConfig
from devstack.kling_simulator.faults import CodeRate, CodeTimes, Faults, ImageErrors
from devstack.kling_simulator.records import RecordedRequest
from devstack.kling_simulator.simulator import KlingSimulator
from devstack.kling_simulator.state import FAIL_MARKER
from devstack.kling_simulator.tasks import TransitionError

__all__ = [
    "FAIL_MARKER",
    "CallbackDelivery",
    "CodeRate",
    "CodeTimes",
    "Faults",
    "ImageErrors",
    "KlingSimulator",
    "RecordedRequest",
    "SimulatorConfig",
    "TransitionError",
]
