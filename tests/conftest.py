from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import settings as hypothesis_settings

from vastserver.app import create_app
from vastserver.settings import Settings, load_settings

pytest_plugins = ["tests.support.redis_server"]

ROOT = Path(__file__).resolve().parent.parent
DEMO_CATALOG = ROOT / "fixtures" / "demo-catalog.json"
FIXED_NOW = datetime(2026, 11, 25, 20, 0, 0, tzinfo=UTC)
SECRET = "test-secret-0123456789abcdef"
ADMIN = "admin-token-0123456789"
PUBLIC_URL = "https://ads.example.com"

# Property tests: no per-example deadline (Hypothesis's default, 200 ms, fails a test whose
# example a loaded CI runner merely descheduled); examples stay random, and a failure prints
# the blob that replays it (@reproduce_failure). Loaded here, before the test modules, so
# their own @settings(...) inherit it. HYPOTHESIS_PROFILE picks another registered profile.
# Every setting we rely on is spelled out: a profile inherits from the default, and on a CI
# runner (the CI variable set) Hypothesis's default is its "ci" profile, which derandomizes.
hypothesis_settings.register_profile(
    "vastserver", deadline=None, print_blob=True, derandomize=False
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "vastserver"))


class FakeClock:
    def __init__(self, now: datetime = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, object] = {
        "public_url": PUBLIC_URL,
        "secret": SECRET,
        "admin_token": ADMIN,
        # explanations for anyone: the decision tests read them without a bearer token
        "debug_access": "open",
        "catalog": str(DEMO_CATALOG),
        "event_log": "off",
        # Rule and delivery tests reason in price x tier; model tests turn the model on.
        "model": "off",
        # A decision past its deadline degrades, and an inline VMAP's later breaks become
        # ad tags: on a machine busy with other work 150 ms is reached now and then, and a
        # test about something else failed. The tests of deadlines set their own.
        "deadline_ms": 5000,
    }
    base.update(overrides)
    return load_settings({}, base)


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(aiohttp_client: Any, clock: FakeClock) -> ClientFactory:
    """A real server on loopback (aiohttp's TestServer) with injected clock and seeded RNG."""

    async def factory(seed: int = 1, **overrides: Any) -> TestClient[Any, Any]:
        app = create_app(make_settings(**overrides), clock=clock, rng=random.Random(seed))
        client: TestClient[Any, Any] = await aiohttp_client(app)
        return client

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


async def raw_request(client: Any, head: bytes) -> tuple[int, bytes]:
    """Send a request head byte for byte (bytes no HTTP client would send) over loopback;
    the status and the body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head + b"Host: x\r\nConnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]
