"""The servers under test, in process, on real loopback sockets, on the simulated clock.

:class:`Servers` builds one or two apps with ``create_app(settings, clock=sim_clock,
rng=Random(seed))`` and serves each with ``AppRunner``/``TCPSite`` on ``127.0.0.1:0``. Every
URL the server emits starts with :data:`PUBLIC_URL` (a reserved ``.invalid`` host, like the
load balancer in front of a real deployment); :meth:`Servers.route` sends each request to one
instance, chosen by a seeded generator, so with two instances a pod fetched from one has its
beacons counted by either.

Pacing: the app's pacing task sleeps 10 s of *wall* time between updates, which on an
accelerated clock is hours of simulated time and would make the throttle depend on the host's
speed. The harness removes that task from the app and calls
``DeliveryControl.update_pacing``/``update_rates`` itself every
:data:`~vastserver.delivery.PACING_INTERVAL_S` simulated seconds (see
:meth:`Servers.pace`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from vastserver.app import RUNTIME, Runtime, create_app
from vastserver.pipeline.context import SimClock
from vastserver.pipeline.scoring import Scorer
from vastserver.settings import Settings, load_settings

__all__ = [
    "ADMIN_TOKEN",
    "PUBLIC_URL",
    "SECRET",
    "HttpResult",
    "Instance",
    "Servers",
    "SimClock",
    "SimError",
]

PUBLIC_URL = "http://ads.sim.invalid"
SECRET = "vastserver-simulator-secret-0123456789"
"""Fixed signing secret: tokens and viewer hashes are the same in every run of a seed."""
ADMIN_TOKEN = "vastserver-simulator-admin-token"
DEADLINE_MS = 10_000
SCORER_ENV = frozenset(
    {
        "VASTSERVER_MODEL",
        "VASTSERVER_SHADOW_MODEL",
        "VASTSERVER_EXPERIMENT",
        "VASTSERVER_ARMS",
        "VASTSERVER_MODEL_WATCH_S",
    }
)
"""Environment the simulator ignores: it chooses the scorer itself (``--model``)."""


class SimError(RuntimeError):
    """The simulation cannot run (bad settings, a server that would not start...)."""


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    body: str
    location: str | None
    instance: int


@dataclass(slots=True)
class Instance:
    index: int
    app: web.Application
    runner: web.AppRunner
    base: str

    @property
    def rt(self) -> Runtime:
        return self.app[RUNTIME]


def server_settings(
    *,
    catalog: Path,
    redis_url: str | None,
    model: Path | None,
    event_log: Path | None,
    extra: Mapping[str, object],
    env: Mapping[str, str],
) -> Settings:
    overrides: dict[str, object] = {
        "public_url": PUBLIC_URL,
        "secret": SECRET,
        "admin_token": ADMIN_TOKEN,
        "catalog": str(catalog),
        "event_log": str(event_log) if event_log is not None else "off",
        # The decision deadline is wall-clock time: on a busy host a decision that runs out
        # of it degrades (store or scoring skipped), which would make a run depend on the
        # host's speed. Give it the most the settings allow; degradations are reported.
        "deadline_ms": DEADLINE_MS,
        # Likewise the limit on uncounted beacons' records counts real seconds: under it, how
        # many of a run's replays and advisories its event log keeps would depend on the
        # host's speed. The simulated day's log keeps them all.
        "uncounted_log_rate": -1,
        **extra,
    }
    if redis_url:
        overrides["redis"] = redis_url
    # The scorer is the simulator's choice: the bundle, or explicitly none (the server would
    # otherwise load the bundled demo model), never reloaded mid-run by the file watcher.
    overrides["model"] = str(model) if model is not None else "off"
    overrides["model_watch_s"] = 0
    return load_settings({k: v for k, v in env.items() if k not in SCORER_ENV}, overrides)


class Servers:
    """One or two in-process server instances and the simulated load balancer."""

    def __init__(
        self,
        settings: list[Settings],
        clock: SimClock,
        seed: int,
        scorer: Callable[[], Scorer] | None = None,
    ) -> None:
        """``scorer``: makes each instance's scorer, in place of the one its settings load."""
        self.settings = settings
        self.scorer = scorer
        self.clock = clock
        self.seed = seed
        self.instances: list[Instance] = []
        self.lb = random.Random(f"sim:{seed}:lb")
        self.http: aiohttp.ClientSession | None = None
        self.requests: Counter[tuple[str, int]] = Counter()
        """(endpoint, status) -> count."""
        self.per_instance: Counter[int] = Counter()

    async def start(self) -> None:
        for i, s in enumerate(self.settings):
            # Pacing runs on the simulated clock (Servers.pace), not the app's wall-clock loop.
            app = create_app(
                s,
                clock=self.clock,
                rng=random.Random(f"sim:{self.seed}:server:{i}"),
                background_pacing=False,
            )
            if self.scorer is not None:
                app[RUNTIME].service.models.use(self.scorer())
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            self.instances.append(Instance(i, app, runner, f"http://{host}:{port}"))
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=16),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None
        for inst in reversed(self.instances):
            await inst.runner.cleanup()
        self.instances.clear()

    async def __aenter__(self) -> Servers:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def route(self, url: str, instance: int | None = None) -> tuple[str, int]:
        if not url.startswith(PUBLIC_URL):
            raise SimError(f"URL outside the server's public base: {url[:120]}")
        n = len(self.instances)
        idx = instance if instance is not None else (self.lb.randrange(n) if n > 1 else 0)
        return self.instances[idx].base + url[len(PUBLIC_URL) :], idx

    async def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        endpoint: str,
        instance: int | None = None,
        read_body: bool = True,
    ) -> HttpResult:
        assert self.http is not None, "servers not started"
        target, idx = self.route(url, instance)
        async with self.http.get(
            target, headers=dict(headers or {}), allow_redirects=False
        ) as resp:
            body = await resp.text() if read_body else ""
            if not read_body:
                await resp.release()
            self.requests[(endpoint, resp.status)] += 1
            self.per_instance[idx] += 1
            return HttpResult(resp.status, body, resp.headers.get("Location"), idx)

    async def pace(self) -> None:
        """One pacing update on every instance (what each instance's loop does every 10 s)."""
        for inst in self.instances:
            rt = inst.rt
            catalog = rt.service.snapshot.catalog
            await rt.delivery.update_pacing(catalog)
            await rt.delivery.update_rates(catalog)

    def scorers(self) -> list[tuple[str, str, str | None]]:
        """(name, version, load error) of each instance's primary scorer."""
        out = []
        for inst in self.instances:
            svc = inst.rt.service
            models = getattr(svc, "models", None)
            error = getattr(models, "error", None)
            out.append((svc.scorer.name, svc.scorer.version, str(error) if error else None))
        return out
