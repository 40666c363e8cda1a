"""Several instances on one Redis enforce caps and budgets as one; Redis failures degrade
by the documented policy (caps fail open, budgets fail closed) and counting resumes."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from lxml import etree

from tests.delivery_support import Clock, base_catalog, make_service, request, tokens_for
from tests.support.redis_server import RedisServer
from tests.test_cli import Server, _env
from vastserver.delivery import claim_window_s
from vastserver.pipeline.delivery import LIFETIME, RESERVATION_WINDOW
from vastserver.store.base import Guard, Guarded, Incr, Read, StoreUnavailable
from vastserver.store.redis import CLAIM_MARGIN_S, RedisStore
from vastserver.tracking import expand_macros

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NS = {"v": "http://www.iab.com/VAST"}


def _cat(**li_fields: Any) -> dict[str, Any]:
    cat = base_catalog()
    cat["line_items"][0].update(li_fields)
    return cat


async def test_two_instances_share_caps_and_budgets(redis_url: str) -> None:
    clock = Clock(T0)
    cat = _cat(
        frequency_caps=[{"scope": "line_item", "max": 2, "window": "1d"}],
        pacing={"delivery": "asap", "budget": {"impressions": 25}},
    )
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    services = [make_service(cat, s, clock, seed=i) for i, s in enumerate(stores)]
    try:
        # One viewer's burst spread over both instances: the cap holds across them.
        burst = [services[i % 2].decide(request("viewer-1")) for i in range(40)]
        got = await asyncio.gather(*burst)
        assert sum("li-a" in [a.candidate.line_item.id for a in d.ads] for d in got) == 2

        # Many viewers, impressions confirmed, alternating instances: budget holds as one.
        delivered = 0
        for i in range(120):
            svc = services[i % 2]
            d = await svc.decide(request(f"v{i}"))
            for tok in tokens_for(svc, d):
                if tok.line_item_id == "li-a":
                    r = await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
                    delivered += r.counted
        # The burst's two unconfirmed serves still hold their reservations (the clock has not
        # moved past RESERVATION_S), so 23 of the 25 impressions are left to deliver.
        assert delivered == 23
        stats = [
            (await s.delivery.line_item_stats(s.snapshot.catalog, ["li-a"]))[0] for s in services
        ]
        assert stats[0]["delivered_impressions"] == stats[1]["delivered_impressions"] == delivered
    finally:
        for s in stores:
            await s.close()


async def test_a_pod_lost_to_a_commit_race_is_decided_again(redis_url: str) -> None:
    """Two instances read one viewer's counters before either commits: both pick the line
    item with one exposure left, one wins its reservation. The other's pod, empty after
    its commit, is decided once more with fresh counters, and gets the house ad rather
    than leaving the break empty."""
    clock = Clock(T0)
    cat = _cat(frequency_caps=[{"scope": "line_item", "max": 1, "window": "1d"}])
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    services = [make_service(cat, s, clock, seed=i) for i, s in enumerate(stores)]
    both_read = asyncio.Barrier(2)
    for svc in services:
        first = svc.delivery.prefetch
        waited: list[bool] = []

        async def prefetch(
            *args: Any, _first: Any = first, _w: list[bool] = waited, **kw: Any
        ) -> Any:
            got = await _first(*args, **kw)
            if not _w:  # the first decision of each instance waits for the other's read
                _w.append(True)
                await asyncio.wait_for(both_read.wait(), 5)
            return got

        svc.delivery.prefetch = prefetch  # type: ignore[method-assign]
    try:
        got = await asyncio.gather(*(s.decide(request("viewer-1", max_ads=1)) for s in services))
        served = sorted(a.candidate.line_item.id for d in got for a in d.ads)
        assert served == ["li-a", "li-b"]
        retries = [
            s.metrics.degradations.labels("commit_race_retry")._value.get() for s in services
        ]
        assert sorted(retries) == [0, 1]
    finally:
        for s in stores:
            await s.close()


async def test_an_earlier_versions_instance_sees_this_ones_budget_delivery(
    redis_url: str,
) -> None:
    """Versions before 49ba610 judge a line item's lifetime and daily impression budgets
    and its lifetime spend budget on ``li:X:imp:life``, ``li:X:imp:d:DAY`` and
    ``li:X:spend:life``. This version judged them on the counters every impression moves and
    stopped moving those, so during a rolling upgrade an old instance on the same Redis
    served the budget again (a reviewer's repro: budget 2, the new instance served 2, the
    old one 2 more). A counted impression moves them again while the budget exists (a
    ``notUsed`` none): the old instance's serve guard and pacing read them spent."""
    clock = Clock(T0)
    budget = {"impressions": 2, "daily_impressions": 5, "spend": 1}
    store = RedisStore(redis_url)
    svc = make_service(_cat(pacing={"delivery": "asap", "budget": budget}), store, clock)
    try:
        events = iter(["notUsed", "impression", "impression"])
        for i in range(6):
            for tok in tokens_for(svc, await svc.decide(request(f"v{i}"))):
                if tok.line_item_id == "li-a":
                    event = next(events)
                    assert (await svc.delivery.on_beacon(event, tok, svc.snapshot.catalog)).counted
        assert next(events, None) is None
        legacy = ["li:li-a:imp:life", f"li:li-a:imp:d:{T0:%Y-%m-%d}", "li:li-a:spend:life"]
        now = clock.now.timestamp()
        assert await store.read([Read(k, LIFETIME) for k in legacy], now) == [2, 2, 40_000]
        # what an old instance's serve checks of the lifetime budget: refused
        reserved = Read("li:li-a:imp:life:r", RESERVATION_WINDOW)
        old_guard = Guard("li:li-a:imp:life", LIFETIME, 2, 1, (reserved,))
        assert await store.commit([Guarded((old_guard,), ())], now) == [False]
        [stats] = await svc.delivery.line_item_stats(svc.snapshot.catalog, ["li-a"])
        assert stats["delivered_impressions"] == 2  # this version's own counter: once
    finally:
        await store.close()


async def test_an_ad_not_used_here_is_not_counted_by_an_earlier_versions_instance(
    redis_url: str,
) -> None:
    """Versions before a2b3eb0 claim ``bc:ID:settled`` for an impression and refuse it when
    that is claimed. This version's ``notUsed`` claimed ``bc:ID:unused`` alone, so an old
    instance on the same Redis counted the impression of an ad a new one released (a
    reviewer's repro): a counted ``notUsed`` claims ``settled`` too. Its replay is still a
    replay, an impression here is still refused, and a ``notUsed`` after an impression
    either version counted is refused."""
    clock = Clock(T0)
    store = RedisStore(redis_url)
    svc = make_service(base_catalog(), store, clock)
    cat = svc.snapshot.catalog
    old_ev = Incr("old-instance-impressions", LIFETIME, 1)

    async def old_beacon(ad: str, event: str) -> list[bool]:
        """An earlier version's settling beacon: its claims and (all new) its count."""
        keys = [f"bc:{ad}:{event}", f"bc:{ad}:settled"]
        return await store.claim_and_add(keys, 3600, [old_ev], clock.now.timestamp())

    try:
        toks = []
        for i in range(3):
            toks += tokens_for(svc, await svc.decide(request(f"v{i}", pod_s=15, max_ads=1)))
        unused, played, later = toks
        assert (await svc.delivery.on_beacon("notUsed", unused, cat)).counted
        assert (await svc.delivery.on_beacon("notUsed", unused, cat)).replay
        got = await svc.delivery.on_beacon("impression", unused, cat)
        assert got.reason == "already_settled"
        assert await old_beacon(unused.ad_serving_id, "impression") == [True, False]
        # an impression counted, by this version or an earlier one, refuses notUsed
        assert (await svc.delivery.on_beacon("impression", played, cat)).counted
        assert await old_beacon(later.ad_serving_id, "impression") == [True, True]
        for tok in (played, later):
            got = await svc.delivery.on_beacon("notUsed", tok, cat)
            assert got.reason == "already_settled"
        assert await store.read([Read(old_ev.key, LIFETIME)], clock.now.timestamp()) == [1]
    finally:
        await store.close()


async def test_redis_outage_degrades_by_policy_and_counting_resumes(
    redis_server: RedisServer, redis_url: str
) -> None:
    clock = Clock(T0)
    cat = base_catalog()
    cat["line_items"][0]["frequency_caps"] = [{"scope": "line_item", "max": 1, "window": "1d"}]
    cat["line_items"][1].update(price=1, tier="standard")
    cat["line_items"][1]["pacing"] = {"delivery": "asap", "budget": {"impressions": 1000}}
    store = RedisStore(redis_url, socket_timeout=0.2)
    svc = make_service(cat, store, clock)
    try:
        d = await svc.decide(request("v1"))
        assert {a.candidate.line_item.id for a in d.ads} == {"li-a", "li-b"}
        redis_server.stop()
        # Caps fail open: the capped li-a serves again; budgets fail closed: li-b does not.
        d = await svc.decide(request("v1"))
        ids = [a.candidate.line_item.id for a in d.ads]
        assert ids == ["li-a"]
        tok = tokens_for(svc, d)[0]
        with pytest.raises(StoreUnavailable):
            await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
        redis_server.start()
        # Counting resumes on the same client (the data was not persisted).
        r = await svc.delivery.on_beacon("impression", tok, svc.snapshot.catalog)
        assert r.counted
        clock.now += timedelta(seconds=1)
        d = await svc.decide(request("v1"))
        assert "li-a" not in [a.candidate.line_item.id for a in d.ads]  # capped again
        assert "li-b" in [a.candidate.line_item.id for a in d.ads]
    finally:
        await store.close()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


def test_two_server_processes_on_one_redis(redis_url: str, tmp_path: Path) -> None:
    """Two `vastserver serve --redis` processes enforce one frequency cap and one budget."""
    cat = _cat(
        frequency_caps=[{"scope": "line_item", "max": 3, "window": "1d"}],
        pacing={"delivery": "asap", "budget": {"impressions": 10}},
    )
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(cat))
    servers = []
    try:
        for _ in range(2):
            s = Server(
                "--catalog",
                str(path),
                "--redis",
                redis_url,
                "--event-log",
                "off",
                env=_env(VASTSERVER_REQUIRE_HTTPS_MEDIA="1"),
            )
            servers.append(s)
        for s in servers:
            s.wait_ready()

        def ask(i: int, device: str) -> list[str]:
            base = servers[i % 2].base
            _, body = _get(f"{base}/vast?pod_duration=30&max_ads=2&device_id={device}")
            root = etree.fromstring(body)
            served = []
            for ad in root.findall("v:Ad", NS):
                if ad.get("id", "").startswith("li-a-"):
                    served.append(ad.find(".//v:Impression", NS).text.strip())
            return served

        # One device, 30 requests fanned out over both servers in parallel, all played.
        with ThreadPoolExecutor(8) as pool:
            imps = [u for got in pool.map(lambda i: ask(i, "dev-1"), range(30)) for u in got]
        assert len(imps) == 3
        for n, url in enumerate(imps):
            parts = urlsplit(expand_macros(url))
            _get(f"{servers[n % 2].base}{parts.path}?{parts.query}")

        # Budget: 40 devices, every li-a impression fired at the other server.
        with ThreadPoolExecutor(8) as pool:
            more = [u for got in pool.map(lambda i: ask(i, f"d{i}"), range(40)) for u in got]
        for n, url in enumerate(more):
            parts = urlsplit(expand_macros(url))
            _get(f"{servers[(n + 1) % 2].base}{parts.path}?{parts.query}")
        assert len(imps) + len(more) == 10
        headers = {"Authorization": "Bearer cli-admin-token-0123456789"}
        for s in servers:
            req = urllib.request.Request(f"{s.base}/admin/line-items/li-a", headers=headers)
            with urllib.request.urlopen(req, timeout=5) as r:
                row = json.loads(r.read())
            assert row["delivered_impressions"] == 10
    finally:
        for s in servers:
            s.stop()


async def test_readyz_reports_the_store_and_stays_ready_without_it(
    make_client: Any, redis_server: RedisServer, redis_url: str
) -> None:
    """Without its store an instance still serves (caps open, budgets closed): /readyz
    stays 200 and says the store is unreachable, then reachable again."""
    client = await make_client(redis=redis_url)
    body = await (await client.get("/readyz")).json()
    assert body["store"] == {"backend": "redis", "reachable": True}
    redis_server.stop()
    try:
        r = await client.get("/readyz")
        assert r.status == 200
        assert (await r.json())["store"] == {"backend": "redis", "reachable": False}
    finally:
        redis_server.start()
    body = await (await client.get("/readyz")).json()
    assert body["store"]["reachable"] is True


def _counter(text: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_each_worker_answers_metrics_on_its_own_port(redis_url: str) -> None:
    """--workers 2 on one port: a scrape of the shared port reaches one worker, so each
    worker also serves /metrics on a port of its own (here each one the system picked, as
    the ``listening`` line names them), and their counts add up."""
    srv = Server(
        "--workers",
        "2",
        "--redis",
        redis_url,
        "--event-log",
        "off",
        "--metrics-port",
        "0",
    )
    try:
        mports = srv.metrics_ports
        srv.wait_ready()  # one worker is up: the other may still be loading
        deadline = time.monotonic() + 30
        for i, mport in enumerate(mports):  # each worker's port listens once it is up
            while True:
                try:
                    _get(f"http://127.0.0.1:{mport}/metrics")
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"worker {i} never listened"
                    time.sleep(0.1)
        n = 60
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(
                    lambda i: _get(f"{srv.base}/vast?pod_duration=30&device_id=m{i}")[0], range(n)
                )
            )
        assert statuses == [200] * n
        texts = [_get(f"http://127.0.0.1:{mport}/metrics")[1].decode() for mport in mports]
        per_worker = [_counter(t, 'vastserver_requests_total{endpoint="vast"') for t in texts]
        assert sum(per_worker) == n
        with pytest.raises(urllib.error.HTTPError) as e:  # only /metrics there
            _get(f"http://127.0.0.1:{mports[0]}/vast")
        assert e.value.code == 404
    finally:
        assert srv.stop() == 0


async def test_raising_the_token_max_age_on_redis_opens_no_replay_window(redis_url: str) -> None:
    """A beacon's claim expires a fixed window after its ad was served: the token max age of
    the instance that counted it, plus an hour. Raised on a Redis fleet, a beacon counted
    under the old value was counted again when replayed, after its claim lapsed, to an
    instance with the new value (where its token still verifies). The store keeps the
    longest claim window any instance claimed with and since when: a token served before it
    grew is refused as expired past the old window, and every claim lasts the longest."""
    clock = Clock(T0)
    old_age, new_age = 3600, 7 * 86400
    stores = [RedisStore(redis_url), RedisStore(redis_url)]
    stores[0].claim_window_s = claim_window_s(old_age)
    stores[1].claim_window_s = claim_window_s(new_age)
    old, new = (make_service(base_catalog(), s, clock, seed=i) for i, s in enumerate(stores))
    old.delivery.token_max_age_s, new.delivery.token_max_age_s = old_age, new_age
    try:
        tok = tokens_for(old, await old.decide(request("v-old")))[0]
        assert (await old.delivery.on_beacon("impression", tok, old.snapshot.catalog)).counted
        claims = [f"vs:d:bc:{tok.ad_serving_id}:{e}" for e in ("impression", "settled")]
        for key in claims:  # Redis lets them lapse an hour after the old max age...
            assert 0 < await stores[0]._client.ttl(key) <= claim_window_s(old_age)
        await stores[0]._client.delete(*claims)  # ...as here, the clock being past that
        clock.now = T0 + timedelta(seconds=claim_window_s(old_age) + 60)
        # the new instance's token check lets it through (younger than its max age) ...
        assert clock.now.timestamp() - tok.served_at < new_age
        replay = await new.delivery.on_beacon("impression", tok, new.snapshot.catalog)
        # ... but it was served when the claims lasted the old window: refused, not counted
        assert not replay.counted and replay.reason == "expired"
        stats = await new.delivery.line_item_stats(new.snapshot.catalog, [tok.line_item_id])
        assert stats[0]["delivered_impressions"] == 1

        # a token served since the new window was noted (the new instance's first claim,
        # above, plus the margin) is countable for the whole new max age
        clock.now += timedelta(seconds=CLAIM_MARGIN_S + 1)  # in force from then on
        fresh = tokens_for(new, await new.decide(request("v-new")))[0]
        clock.now += timedelta(seconds=3 * 86400)
        assert (await new.delivery.on_beacon("impression", fresh, new.snapshot.catalog)).counted
        # and an instance still on the old value writes claims that last the longest window
        late = tokens_for(old, await old.decide(request("v-late")))[0]
        assert (await old.delivery.on_beacon("impression", late, old.snapshot.catalog)).counted
        ttl = await stores[0]._client.ttl(f"vs:d:bc:{late.ad_serving_id}:impression")
        assert ttl > claim_window_s(new_age) - 60
    finally:
        for s in stores:
            await s.close()
