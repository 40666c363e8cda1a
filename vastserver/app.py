"""aiohttp application factory: routes, middlewares and the app's shared state.

``create_app(settings)`` builds everything a server needs from settings; tests call it with an
injected clock and RNG. State lives under typed ``web.AppKey``s, never in module globals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from aiohttp import web

from vastserver.catalog.load import CatalogError, load_catalog
from vastserver.catalog.model import BreakPosition
from vastserver.explain import decision_json
from vastserver.metrics import Metrics
from vastserver.params import (
    ParamError,
    client_info,
    parse_targeting,
    parse_vast_request,
    parse_vmap_query,
)
from vastserver.pipeline.context import AdRequest, BreakSpec, system_clock
from vastserver.pipeline.schedule import plan_breaks
from vastserver.render import Renderer
from vastserver.service import AdService, build_snapshot
from vastserver.settings import Settings
from vastserver.tracking import (
    EVENTS,
    PARAM_TOKEN,
    Keyring,
    TokenError,
    TokenErrorKind,
    TrackingUrls,
    new_ad_serving_id,
    parse_beacon_query,
    verify,
)

log = logging.getLogger("vastserver.http")

XML_TYPE = "application/xml"
MAX_QUERY = 4096
"""Longest query string we read; aiohttp itself refuses request lines over 8190 bytes."""


@dataclass(slots=True)
class Runtime:
    settings: Settings
    service: AdService
    renderer: Renderer
    keyring: Keyring
    metrics: Metrics
    clock: Callable[[], datetime]
    rng: random.Random
    ready: bool = False


RUNTIME = web.AppKey("runtime", Runtime)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _rt(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def _bad_request(err: ParamError) -> web.Response:
    body = json.dumps({"error": "bad_request", "field": err.field, "why": err.why})
    return web.Response(status=400, text=body, content_type="application/json")


def _xml(body: str) -> web.Response:
    resp = web.Response(text=body, content_type=XML_TYPE, charset="utf-8")
    resp.headers["Cache-Control"] = "no-store"
    return resp


# ---------------------------------------------------------------------------- middlewares


@web.middleware
async def metrics_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route name (bounded labels) and status class."""
    rt = _rt(request)
    t0 = time.perf_counter()
    route = request.match_info.route
    endpoint = route.name or "unmatched"
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        outcome = f"{status // 100}xx"
        rt.metrics.requests.labels(endpoint, outcome).inc()
        rt.metrics.latency.labels(endpoint, outcome).observe(time.perf_counter() - t0)


@web.middleware
async def cors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTML5 CTV players fetch cross-origin with credentials: echo the Origin."""
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS" and origin:
        resp: web.StreamResponse = web.Response(status=204)
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        req_headers = request.headers.get("Access-Control-Request-Headers")
        if req_headers:
            resp.headers["Access-Control-Allow-Headers"] = req_headers[:512]
        resp.headers["Access-Control-Max-Age"] = "600"
    else:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            resp = e
            if origin:
                _cors_headers(resp, origin)
            raise
    if origin:
        _cors_headers(resp, origin)
    return resp


def _cors_headers(resp: web.StreamResponse, origin: str) -> None:
    resp.headers["Access-Control-Allow-Origin"] = origin
    resp.headers["Access-Control-Allow-Credentials"] = "true"
    resp.headers["Access-Control-Expose-Headers"] = "X-Request-Id"
    resp.headers["Vary"] = "Origin"


@web.middleware
async def limits_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    if len(request.rel_url.raw_query_string) > MAX_QUERY:
        return web.Response(status=414, text="query string too long")
    return await handler(request)


# ---------------------------------------------------------------------------- handlers


def _query(request: web.Request) -> dict[str, str]:
    """First value of each parameter (repeated parameters: the first wins)."""
    out: dict[str, str] = {}
    for k, v in request.query.items():
        out.setdefault(k, v)
    return out


def _ad_request(request: web.Request) -> AdRequest:
    rt = _rt(request)
    q = _query(request)
    client = client_info(request.headers, request.remote)
    placement = q.get("placement")
    rules = rt.service.snapshot.catalog.rules_for(placement)
    return parse_vast_request(q, client, rules, require_https=rt.settings.require_https_media)


async def vast_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    try:
        req = _ad_request(request)
    except ParamError as e:
        return _bad_request(e)
    decision = rt.service.decide(req)
    debug = decision_json(decision) if req.debug else None
    return _xml(rt.renderer.vast(decision, rng=rt.rng, debug=debug))


async def decide_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    try:
        req = _ad_request(request)
    except ParamError as e:
        return _bad_request(e)
    decision = rt.service.decide(req)
    return web.json_response(decision_json(decision))


async def vmap_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    q = _query(request)
    try:
        client = client_info(request.headers, request.remote)
        vq = parse_vmap_query(q)
        targeting = parse_targeting(q, client)
    except ParamError as e:
        return _bad_request(e)
    rules = rt.service.snapshot.catalog.rules_for(q.get("placement"))
    breaks = plan_breaks(
        rules,
        vq.cue_points_s,
        preroll=vq.preroll,
        postroll=vq.postroll,
        preroll_duration_s=vq.preroll_duration_s,
        midroll_duration_s=vq.midroll_duration_s,
        postroll_duration_s=vq.postroll_duration_s,
    )
    if targeting.session is None:
        targeting = replace(targeting, session=new_ad_serving_id(rt.rng))
    session = targeting.session or ""
    if vq.inline:
        base = targeting.request(
            BreakSpec(BreakPosition.PRE, pod_duration_ms=1000, max_ads=1),
            require_https=rt.settings.require_https_media,
        )
        decisions = rt.service.decide_stream(base, breaks)
        body = rt.renderer.vmap_inline(breaks, decisions, session=session, rng=rt.rng)
    else:
        body = rt.renderer.vmap_tags(breaks, q, session=session)
    return _xml(body)


async def beacon_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    event = request.match_info["event"]
    if event not in EVENTS:
        rt.metrics.beacons.labels("unknown", "bad_event").inc()
        return web.Response(status=400, text="unknown event")
    q = _query(request)
    params = parse_beacon_query(q)
    if PARAM_TOKEN not in q:
        # Tokenless beacons: the no-fill <Error> and VMAP break events. Advisory only.
        if event in ("error", "breakStart", "breakEnd"):
            rt.metrics.beacons.labels(event, "advisory").inc()
            _log_event(rt, request, event, None, params.error_code)
            return web.Response(status=204)
        rt.metrics.beacons.labels(event, "malformed").inc()
        return web.Response(status=400, text="missing tk")
    try:
        token = verify(
            params.token or "",
            rt.keyring,
            now=int(rt.clock().timestamp()),
            max_age_s=rt.settings.token_max_age_s,
        )
    except TokenError as e:
        rt.metrics.beacons.labels(event, e.kind.value).inc()
        log.info(json.dumps({"event": "beacon_rejected", "name": event, "why": e.kind.value}))
        status = 400 if e.kind is TokenErrorKind.MALFORMED else 403
        return web.Response(status=status, text=e.kind.value)
    rt.metrics.beacons.labels(event, "ok").inc()
    _log_event(rt, request, event, token.ad_serving_id, params.error_code, token=token)
    return web.Response(status=204)


def _log_event(
    rt: Runtime,
    request: web.Request,
    event: str,
    ad_serving_id: str | None,
    error_code: int | None,
    token: Any = None,
) -> None:
    rec: dict[str, Any] = {
        "event": "beacon",
        "name": event,
        "at": rt.clock().isoformat(),
        "ad_serving_id": ad_serving_id,
        "caller_ip": request.remote,
        "device_ip": request.headers.get("X-Device-IP"),
    }
    if error_code is not None:
        rec["error_code"] = error_code
    if token is not None:
        rec.update(line_item_id=token.line_item_id, creative_id=token.creative_id)
    log.info(json.dumps(rec))


async def click_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    params = parse_beacon_query(_query(request))
    try:
        token = verify(
            params.token or "",
            rt.keyring,
            now=int(rt.clock().timestamp()),
            max_age_s=rt.settings.token_max_age_s,
        )
    except TokenError as e:
        rt.metrics.beacons.labels("click", e.kind.value).inc()
        status = 400 if e.kind is TokenErrorKind.MALFORMED else 403
        return web.Response(status=status, text=e.kind.value)
    rt.metrics.beacons.labels("click", "ok").inc()
    _log_event(rt, request, "click", token.ad_serving_id, None, token=token)
    if not token.click_url:
        return web.Response(status=204)
    raise web.HTTPFound(location=token.click_url)


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    snap = rt.service.snapshot
    body = {
        "ready": rt.ready,
        "catalog": {"version": snap.catalog.version, "line_items": len(snap.catalog.line_items)},
        "model": {"loaded": False, "scorer": rt.service.scorer.name},
    }
    return web.json_response(body, status=200 if rt.ready else 503)


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    resp = web.Response(body=rt.metrics.render())
    resp.content_type = "text/plain"
    resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return resp


def _authorized(request: web.Request) -> bool:
    import hmac

    token = _rt(request).settings.admin_token
    got = request.headers.get("Authorization", "")
    if token is None or not got.startswith("Bearer "):
        return False
    return hmac.compare_digest(got[len("Bearer ") :].encode(), token.encode())


async def reload_catalog_handler(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return web.json_response({"error": "unauthorized"}, status=401)
    rt = _rt(request)
    try:
        snap = rt.service.reload_catalog()
    except CatalogError as e:
        return web.json_response(
            {"error": "catalog_invalid", "issues": [str(i) for i in e.errors]}, status=422
        )
    except OSError as e:
        return web.json_response({"error": "catalog_unreadable", "why": str(e)}, status=422)
    return web.json_response({"version": snap.catalog.version})


# ---------------------------------------------------------------------------- factory


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = system_clock,
    rng: random.Random | None = None,
) -> web.Application:
    metrics = Metrics()
    catalog = load_catalog(settings.catalog_path)
    snapshot = build_snapshot(catalog, str(settings.catalog_path), clock())
    keyring = Keyring.from_secrets(settings.secrets)
    urls = TrackingUrls(settings.public_url)
    renderer = Renderer(
        settings.template_dir,
        urls=urls,
        keyring=keyring,
        clock=clock,
        progress_offsets_s=settings.progress_offsets_s,
    )
    service = AdService(snapshot, clock=clock, metrics=metrics)
    rt = Runtime(
        settings=settings,
        service=service,
        renderer=renderer,
        keyring=keyring,
        metrics=metrics,
        clock=clock,
        rng=rng or random.SystemRandom(),
    )
    app = web.Application(middlewares=[metrics_mw, cors_mw, limits_mw], client_max_size=256 * 1024)
    app[RUNTIME] = rt
    app.router.add_get("/vast", vast_handler, name="vast")
    app.router.add_get("/vmap", vmap_handler, name="vmap")
    app.router.add_get("/decide", decide_handler, name="decide")
    app.router.add_get("/t/{event}", beacon_handler, name="beacon")
    app.router.add_get("/c", click_handler, name="click")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics_handler, name="metrics")
    app.router.add_post("/admin/catalog/reload", reload_catalog_handler, name="admin_reload")
    app.cleanup_ctx.append(_readiness)
    app.cleanup_ctx.append(_sighup)
    return app


async def _readiness(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    rt.ready = True
    yield
    rt.ready = False


def reload_from_signal(rt: Runtime) -> None:
    """SIGHUP: reload the catalog; a bad file is logged and the old snapshot keeps serving."""
    try:
        snap = rt.service.reload_catalog()
    except (CatalogError, OSError) as e:
        problems = [str(i) for i in e.errors] if isinstance(e, CatalogError) else [str(e)]
        log.error(json.dumps({"event": "catalog_reload_rejected", "problems": problems[:50]}))
        return
    log.info(json.dumps({"event": "catalog_reloaded", "version": snap.catalog.version}))


async def _sighup(app: web.Application) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, reload_from_signal, app[RUNTIME])
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        yield
        return
    yield
    loop.remove_signal_handler(signal.SIGHUP)
