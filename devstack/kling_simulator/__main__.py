"""`python -m devstack.kling_simulator --port N ...`: serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from devstack.kling_simulator.config import SimulatorConfig
from devstack.kling_simulator.faults import Faults
from devstack.kling_simulator.simulator import KlingSimulator
from devstack.shutdown import stop_on_signals, wait_until_set


def parse_args(argv: Sequence[str] | None = None) -> SimulatorConfig:
    parser = argparse.ArgumentParser(prog="python -m devstack.kling_simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--api-key", help="accepted as 'Authorization: Bearer <key>'")
    parser.add_argument("--access-key", help="with --secret-key: accept HS256 JWTs whose iss is this key")
    parser.add_argument("--secret-key")
    parser.add_argument("--processing-delay", type=float, default=0.05, metavar="S")
    parser.add_argument("--succeed-delay", type=float, default=0.1, metavar="S")
    parser.add_argument(
        "--no-auto-advance", dest="auto_advance", action="store_false", help="tasks move only via /_sim/.../advance"
    )
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--max-concurrency", type=int, help="slots (sum of n of unfinished tasks); over: 1303")
    parser.add_argument(
        "--faults", default="{}", metavar="JSON", help='e.g. {"create_errors": [{"code": 1303, "times": 2}]}'
    )
    parser.add_argument("--webhook-secret", metavar="whsec_...", help="sign callbacks (Standard Webhooks)")
    parser.add_argument("--callback-wrapped", action="store_true", help="wrap callbacks in the code/data envelope")
    parser.add_argument("--callback-on-submit", action="store_true", help="also call back for 'submitted'")
    parser.add_argument("--public-base-url", help="base of result image URLs (default: the server's own)")
    parser.add_argument("--image-format", choices=("png", "jpeg", "mixed"), default="png")
    parser.add_argument("--image-width", type=int, default=512)
    parser.add_argument("--image-height", type=int, default=512)
    parser.add_argument("--image-noise", action="store_true", help="incompressible pixels (big files)")
    parser.add_argument("--seed", type=int)
    # Every option is named as the SimulatorConfig field it sets; only --faults needs parsing first.
    settings = vars(parser.parse_args(argv))
    try:
        settings["faults"] = Faults.from_mapping(json.loads(settings["faults"]))
        return SimulatorConfig(**settings)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError too
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    stop = stop_on_signals()
    simulator = KlingSimulator(config).start()
    try:
        print(f"kling-simulator listening on {simulator.base_url}", flush=True)
        wait_until_set(stop)
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
