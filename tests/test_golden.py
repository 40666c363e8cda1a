"""Golden files: fixed requests with an injected clock and RNG give byte-identical output.

Regenerate after an intended change with ``VASTSERVER_UPDATE_GOLDEN=1 make test`` and review
the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, ClientFactory

GOLDEN = ROOT / "fixtures" / "golden"
UPDATE = os.environ.get("VASTSERVER_UPDATE_GOLDEN") == "1"

CASES = {
    "vast42-midroll-120s": "/vast?pod_duration=120&max_ads=4&device_type=ctv&platform=roku",
    "vast43-preroll-sports": "/vast?vast=4.3&break=pre&genre=sports&rating=TV-14&live=1",
    "vast30-midroll-60s": "/vast?vast=3.0&pod_duration=60&max_ads=3",
    "vast20-midroll-60s": "/vast?vast=2.0&pod_duration=60&max_ads=3",
    "vast42-nofill": "/vast?pod_duration=2",
    "vmap-tags": "/vmap?content_duration=1800&cue_points=600,1200&session=golden-1",
    "vmap-inline": "/vmap?content_duration=1200&cue_points=600&inline=1&session=golden-2",
}


@pytest.mark.parametrize("name", sorted(CASES))
async def test_golden(make_client: ClientFactory, name: str) -> None:
    client: Any = await make_client(seed=42)
    resp = await client.get(CASES[name])
    assert resp.status == 200
    body = await resp.text()
    _compare(body, GOLDEN / f"{name}.xml")


def _compare(body: str, path: Path) -> None:
    if UPDATE or not path.exists():
        if not UPDATE and os.environ.get("CI"):
            pytest.fail(f"golden file {path.name} is missing")
        path.write_text(body)
    assert body == path.read_text(), f"{path.name} changed; see {path}"


async def test_same_seed_same_bytes(make_client: ClientFactory) -> None:
    a: Any = await make_client(seed=5)
    b: Any = await make_client(seed=5)
    c: Any = await make_client(seed=6)
    q = CASES["vast42-midroll-120s"]
    body_a = await (await a.get(q)).text()
    assert body_a == await (await b.get(q)).text()
    assert body_a != await (await c.get(q)).text()


EXPLAINED = {
    "vast42-midroll-debug.xml": "/vast?pod_duration=120&max_ads=4&device_type=ctv&debug=1",
    "decide-midroll.json": "/decide?pod_duration=120&max_ads=4&device_type=ctv",
}
"""Explanations (``debug=1`` and ``GET /decide``) of requests without slot rules: what a
structured pod adds to the explanation must leave these byte for byte as they were."""


@pytest.mark.parametrize("name", sorted(EXPLAINED))
async def test_golden_explanation(make_client: ClientFactory, name: str) -> None:
    client: Any = await make_client(seed=42)
    resp = await client.get(EXPLAINED[name], headers={"X-Request-Id": "golden-explain"})
    assert resp.status == 200
    body = await resp.text()
    _compare(body, GOLDEN / name)
