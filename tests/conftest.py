"""Shared fixtures: moto in server mode as AWS (real HTTP), and the pipeline's resources on it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devstack.kling_simulator import KlingSimulator, SimulatorConfig
from devstack.stack.environment import environment_set
from devstack.stack.moto_server import MotoServer
from devstack.stack.template_stack import AwsResources, create_resources


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    server.apply_environment(os.environ)
    yield server
    server.stop()


@pytest.fixture
def aws(moto_server: MotoServer) -> Iterator[AwsResources]:
    """Fresh table, queues and buckets for one test; the contract's variables point at them."""
    moto_server.reset()
    resources = create_resources("test", visibility_timeout=30, max_receive_count=3)
    with environment_set(resources.environment()):
        yield resources


@pytest.fixture
def kling_sim() -> Iterator[KlingSimulator]:
    """A started Kling simulator (API key "test-key", default short delays), stopped after the test."""
    simulator = KlingSimulator(SimulatorConfig(api_key="test-key")).start()
    yield simulator
    simulator.stop()
