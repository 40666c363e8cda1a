"""aiohttp application factory: routes, middlewares and the app's shared state.

``create_app(settings)`` builds everything a server needs from settings; tests call it with an
injected clock and RNG. State lives under typed ``web.AppKey``s, never in module globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError

from vastserver.bidresponse import auction_floor_cpm, bid_response, excluded, no_bid
from vastserver.catalog.load import CatalogError, load_catalog
from vastserver.catalog.model import BreakPosition, Catalog
from vastserver.consent import Permissions
from vastserver.delivery import DeliveryControl, claim_window_s
from vastserver.eventlog import DROP_RATE_LIMITED, DROP_UNRECORDABLE, EventLog, RateLimit
from vastserver.explain import decision_json
from vastserver.geo import GeoError, GeoLookup, MaxMindLookup, open_geo
from vastserver.logs import REQUEST_ID, Sampler
from vastserver.logs import event as log_event
from vastserver.metrics import Metrics
from vastserver.models import ModelManager
from vastserver.openrtb import OpenRtbPod, parse_bid_request
from vastserver.params import (
    Located,
    ParamError,
    client_info,
    header_text,
    ip_prefix,
    locate,
    parse_page,
    parse_targeting,
    parse_vast_request,
    parse_vmap_query,
    vmap_midrolls,
)
from vastserver.pipeline.context import (
    DEFAULT_VAST_VERSION,
    VAST_VERSIONS,
    AdRequest,
    system_clock,
)
from vastserver.pipeline.decide import Decision
from vastserver.pipeline.delivery import SeparationRules
from vastserver.pipeline.schedule import PlannedBreak, plan_breaks
from vastserver.records import EventSink, NullSink, beacon_record
from vastserver.render import Renderer
from vastserver.service import AdService, build_snapshot
from vastserver.settings import Settings
from vastserver.signals import RELOAD_SIGNALS, take_early_signals
from vastserver.store import open_store
from vastserver.store.base import Store, StoreUnavailable, within
from vastserver.store.memory import MemoryStore
from vastserver.store.statefile import StateFileError, StateLock, load_state, save_state
from vastserver.store.timed import TimedStore
from vastserver.tracking import (
    EVENTS,
    PARAM_TOKEN,
    AdToken,
    Keyring,
    TokenError,
    TokenErrorKind,
    TrackingUrls,
    ascii_url,
    beacon_counting_params,
    beacon_log_params,
    fill_click_macros,
    new_ad_serving_id,
    verify,
)

log = logging.getLogger("vastserver.http")

XML_TYPE = "application/xml"
MAX_QUERY = 4096
"""Longest query string we read; aiohttp itself refuses request lines over 8190 bytes."""
READYZ_STORE_TIMEOUT_S = 0.25
"""How long ``/readyz`` waits for the store's ping."""
MAX_BODY = 256 * 1024
"""The largest request body read (aiohttp's ``client_max_size``): a larger one is a 413."""
BODY_TIMEOUT_S = 10.0
"""A request body must arrive within this long (408 after it). Bodies are read before a
request takes a decision slot, so slow or stalled uploads cannot hold the slots."""


@dataclass(slots=True)
class SignalReload:
    """A reload signal's state in a worker: the reload it started, whether more signals came
    during it, and whether to let the next one pass."""

    signum: signal.Signals
    model: bool = True
    """Whether it reloads the model."""
    catalog: bool = True
    """Whether it reloads the catalog."""
    task: asyncio.Task[None] | None = None
    again: bool = False
    skip: bool = False
    """Let the next signal pass: the parent echoing this worker's own admin reload."""


@dataclass(slots=True)
class Runtime:
    settings: Settings
    service: AdService
    renderer: Renderer
    keyring: Keyring
    metrics: Metrics
    clock: Callable[[], datetime]
    rng: random.Random
    geo: GeoLookup
    store: Store
    delivery: DeliveryControl
    events: EventSink
    uncounted_log: RateLimit | None = None
    """The limit on the event-log records of uncounted beacons (``VASTSERVER_UNCOUNTED_LOG_RATE``);
    None: none."""
    ready: bool = False
    in_flight: int = 0
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    sighup: SignalReload = field(default_factory=lambda: SignalReload(signal.SIGHUP))
    """SIGHUP: reload the catalog and the model."""
    sigusr1: SignalReload = field(
        default_factory=lambda: SignalReload(signal.SIGUSR1, catalog=False)
    )
    """SIGUSR1: reload the model alone (a catalog of 100k line items takes seconds)."""
    sigusr2: SignalReload = field(default_factory=lambda: SignalReload(signal.SIGUSR2, model=False))
    """SIGUSR2: reload the catalog alone, as ``POST /admin/catalog/reload`` does."""
    log_sampler: Sampler = field(default_factory=Sampler)


RUNTIME = web.AppKey("runtime", Runtime)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _rt(request: web.Request) -> Runtime:
    return request.app[RUNTIME]


def _bad_request(err: ParamError) -> web.Response:
    body = json.dumps({"error": "bad_request", "field": err.field, "why": err.why})
    return web.Response(status=400, text=body, content_type="application/json")


COMPRESS_MIN = 1024
"""XML and BidResponse answers from this many characters on are compressed for a caller that
accepts it."""


def _xml(body: str, request: web.Request | None = None) -> web.Response:
    """An XML answer (:func:`_answer`)."""
    return _answer(body, XML_TYPE, request)


def _answer(body: str, content_type: str, request: web.Request | None = None) -> web.Response:
    """A generated document, never cached; with the ``request``, gzip (or deflate) when its
    ``Accept-Encoding`` takes it and the body is large enough to gain from it (a 4-ad pod
    of ~31 KB is ~4 KB compressed, which a stitcher or a player on a slow link feels).
    aiohttp compresses a large body in a thread, off the event loop."""
    resp = web.Response(text=body, content_type=content_type, charset="utf-8")
    resp.headers["Cache-Control"] = "no-store"
    if request is not None and len(body) >= COMPRESS_MIN:
        resp.headers["Vary"] = "Accept-Encoding"
        coding = accepted_coding(request.headers.get("Accept-Encoding", ""))
        if coding is not None:
            resp.enable_compression(coding)
    return resp


def accepted_coding(header: str) -> web.ContentCoding | None:
    """The coding to compress with for an ``Accept-Encoding`` (RFC 9110 §12.5.3): gzip when
    it is listed with a weight above 0, else deflate so listed, else None. A coding listed
    with ``q=0`` is refused, not taken (aiohttp's own choice looks for the name alone)."""
    deflate = False
    for part in header.lower().split(","):
        name, _, params = part.partition(";")
        name = name.strip()
        if name not in ("gzip", "x-gzip", "deflate"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # a weight that cannot be read: not a yes
        if q <= 0:
            continue
        if name != "deflate":
            return web.ContentCoding.gzip
        deflate = True
    return web.ContentCoding.deflate if deflate else None


# ---------------------------------------------------------------------------- middlewares


_RID_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
_rid_prefix = os.urandom(6).hex()
_rid_seq = itertools.count(1)


def _new_request_id() -> str:
    """A random per-process prefix and a counter: unique, and no system call per request."""
    return f"{_rid_prefix}{next(_rid_seq):08x}"


def _reset_request_ids() -> None:
    """Forked workers must not share the parent's prefix."""
    global _rid_prefix, _rid_seq
    _rid_prefix = os.urandom(6).hex()
    _rid_seq = itertools.count(1)


os.register_at_fork(after_in_child=_reset_request_ids)
DECISION_ENDPOINTS = frozenset({"vast", "vmap", "decide", "openrtb_pod", "openrtb_auction"})
NO_CORS = ("/admin/", "/metrics")
"""Paths that answer no CORS preflight and carry no CORS headers: operators' tools, not
players."""


@web.middleware
async def edge_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """What every request goes through, outermost first (one middleware rather than five
    layers: a beacon's whole budget is a few dozen µs):

    1. **request id**: a sane incoming ``X-Request-Id`` is kept, else one is made; it is in
       every log line of the request, the response header, the event log and the debug
       explanation;
    2. **metrics**: count and time every request by route name (bounded labels) and status
       class;
    3. **CORS**: HTML5 CTV players fetch cross-origin with credentials: answer preflights,
       echo the ``Origin`` (not on the admin API and ``/metrics``, :data:`NO_CORS`);
    4. **limits**: an over-long query string is refused (414); a body is read in full, within
       :data:`BODY_TIMEOUT_S` (408), before the guard, and one that cannot be decoded is
       refused (400);
    5. **guard**: bound the decision requests in flight (shed the excess at once with a
       no-fill), and turn any unexpected error into a no-fill (players) or a 503, logged,
       never a 500 page.
    """
    rt = _rt(request)
    t0 = time.perf_counter()
    name = request.match_info.route.name
    incoming = request.headers.get("X-Request-Id", "")
    rid = incoming if 0 < len(incoming) <= 64 and set(incoming) <= _RID_OK else None
    rid = rid or _new_request_id()
    ctx_token = REQUEST_ID.set(rid)
    origin = request.headers.get("Origin")
    if origin and request.path.startswith(NO_CORS):
        origin = None  # no browser page calls these, whatever token it holds
    status = 500
    try:
        try:
            resp = await _guarded(rt, request, handler, name or "", origin)
        except web.HTTPException as e:
            status = e.status
            if origin:
                _cors_headers(e, origin)
            e.headers["X-Request-Id"] = rid
            raise
        status = resp.status
        if origin:
            _cors_headers(resp, origin)
        resp.headers["X-Request-Id"] = rid
        if request.path.startswith("/openrtb2/"):
            # every answer of the OpenRTB endpoints, theirs or the edge's (405, 413, shed)
            resp.headers["X-OpenRTB-Version"] = OPENRTB_VERSION
        return resp
    finally:
        outcome = f"{status // 100}xx"
        endpoint = name or "unmatched"
        rt.metrics.requests_by(endpoint, outcome).inc()
        rt.metrics.latency_by(endpoint, outcome).observe(time.perf_counter() - t0)
        REQUEST_ID.reset(ctx_token)


async def _guarded(
    rt: Runtime, request: web.Request, handler: Handler, endpoint: str, origin: str | None
) -> web.StreamResponse:
    """Steps 3-5 of :func:`edge_mw` (CORS preflight, limits, guard) around the handler."""
    unmatched = (
        request.match_info.http_exception
        if isinstance(request.match_info, MatchInfoError)
        else None
    )
    if origin and request.method == "OPTIONS" and (unmatched is None or unmatched.status != 404):
        # a preflight of a path we serve (its other methods: the router's 405)
        resp: web.StreamResponse = web.Response(status=204)
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        req_headers = request.headers.get("Access-Control-Request-Headers")
        if req_headers:
            resp.headers["Access-Control-Allow-Headers"] = req_headers[:512]
        resp.headers["Access-Control-Max-Age"] = "600"
        return resp
    if unmatched is not None:
        # 404/405: answered, not raised (aiohttp's handler raises it; the traceback would
        # hold the frames in a cycle)
        return web.Response(
            status=unmatched.status,
            text=unmatched.text,
            headers={k: v for k, v in unmatched.headers.items() if k != "Content-Type"},
        )
    if len(request.rel_url.raw_query_string) > MAX_QUERY:
        return web.Response(status=414, text="query string too long")
    if request.body_exists:
        refused = await _read_body(request)
        if refused is not None:
            return refused
    decision = endpoint in DECISION_ENDPOINTS
    if decision:
        if rt.in_flight >= rt.settings.max_in_flight:
            rt.metrics.shed.labels(endpoint).inc()
            resp = _no_fill(rt, request, endpoint, "overload")
            resp.headers["X-Shed"] = "1"  # lets load tests tell shed from admitted requests
            return resp
        rt.in_flight += 1
        rt.metrics.in_flight.set(rt.in_flight)
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        log_event(log, "unhandled_error", logging.ERROR, endpoint=endpoint, exc_info=True)
        rt.metrics.degradations.labels("internal_error").inc()
        if decision:
            return _no_fill(rt, request, endpoint, "internal_error")
        return web.Response(status=503, text="temporarily unavailable")
    finally:
        if decision:
            rt.in_flight -= 1
            rt.metrics.in_flight.set(rt.in_flight)


async def _read_body(request: web.Request) -> web.StreamResponse | None:
    """Read (and keep: ``request.read()`` returns it again) the whole body; None when read,
    else the answer. Over ``client_max_size`` aiohttp raises its 413 (an HTTPException);
    a ``Content-Length`` announcing more is a 413 at once, without waiting for the body."""
    if (request.content_length or 0) > MAX_BODY:
        request.content.feed_eof()  # not read: the connection closes after the answer
        resp = _bad_request(ParamError("body", f"larger than {MAX_BODY} bytes"))
        resp.set_status(413)
        resp.force_close()
        return resp
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            await request.read()
    except TimeoutError:
        resp = _bad_request(ParamError("body", f"not received within {BODY_TIMEOUT_S:g} s"))
        resp.set_status(408)
        return resp
    except web.RequestPayloadError as e:  # a bad Content-Encoding, a broken chunked body
        # The rest of the body cannot be parsed: mark it read, so aiohttp does not read it
        # again after the answer (and log that as an unhandled error), and close the
        # connection after the answer.
        request.content.feed_eof()
        resp = _bad_request(ParamError("body", _unreadable(request, e)))
        resp.force_close()
        return resp
    except ConnectionError:  # the client went away mid-body: nobody reads the answer
        return _bad_request(ParamError("body", "connection lost"))
    return None


def _unreadable(request: web.Request, e: web.RequestPayloadError) -> str:
    """Why a body could not be read, in the caller's terms (aiohttp's own message may name
    a library to install)."""
    coding = request.headers.get("Content-Encoding", "").strip()
    if "content-encoding" in str(e).lower():
        return (
            f"cannot be decoded as Content-Encoding {coding[:40]!r}"
            " (gzip, deflate or none are accepted)"
        )
    return "malformed: " + " ".join(str(e).split())[:200]


def _no_fill(rt: Runtime, request: web.Request, endpoint: str, reason: str) -> web.StreamResponse:
    """The cheapest valid answer: an empty VAST (or VMAP) for players, OpenRTB's no-bid (204,
    no body) for an exchange, 503 for JSON APIs."""
    if endpoint == "openrtb_auction":
        return web.Response(status=204)
    if endpoint == "vmap":
        return _xml(rt.renderer.empty_vmap())
    if endpoint in ("vast", "openrtb_pod"):
        return _xml(rt.renderer.empty_vast(reason, _asked_vast_version(request, endpoint)))
    return web.json_response({"error": reason}, status=503, headers={"Retry-After": "1"})


def _asked_vast_version(request: web.Request, endpoint: str) -> str:
    """The VAST version a request asks for, where reading it costs next to nothing: the
    ``vast`` query parameter of ``/vast`` (the first one, as the parser reads it). Anything
    else gets the default: a player that cannot read a version it did not ask for would
    otherwise take a shed request for a broken ad server; an OpenRTB request's version is in
    its JSON body, which the overload path does not parse."""
    if endpoint == "vast":
        asked = request.query.get("vast")
        if asked in VAST_VERSIONS:
            return asked
    return DEFAULT_VAST_VERSION


def _cors_headers(resp: web.StreamResponse, origin: str) -> None:
    resp.headers["Access-Control-Allow-Origin"] = origin
    resp.headers["Access-Control-Allow-Credentials"] = "true"
    resp.headers["Access-Control-Expose-Headers"] = "X-Request-Id"
    vary = resp.headers.get("Vary")  # a compressible answer's Accept-Encoding stays
    resp.headers["Vary"] = f"{vary}, Origin" if vary and "Origin" not in vary else vary or "Origin"


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
    client = client_info(request.headers, request.remote, q)
    placement = q.get("placement")
    rules = rt.service.snapshot.catalog.rules_for(placement)
    req = parse_vast_request(
        q,
        client,
        rules,
        require_https=rt.settings.require_https_media,
        tcf_vendor_id=rt.settings.tcf_vendor_id,
    )
    return _locate(rt, req)


def _locate(rt: Runtime, x: Located) -> Located:
    """The request located by its country or IP, and the GDPR applied by that country when
    ``VASTSERVER_GDPR_BY_GEO`` is on (:func:`vastserver.params.locate`)."""
    return locate(
        x, rt.geo, gdpr_by_geo=rt.settings.gdpr_by_geo, tcf_vendor_id=rt.settings.tcf_vendor_id
    )


async def vast_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    try:
        req = _ad_request(request)
    except ParamError as e:
        return _bad_request(e)
    if req.debug and not _may_explain(request):
        return _explain_refused("debug")
    if (refused := _preview(rt, request, req.test, "vast")) is not None:
        return refused
    decision = await rt.service.decide(req, request_id=REQUEST_ID.get(), deadline=_deadline(rt))
    debug = decision_json(decision, request_id=REQUEST_ID.get()) if req.debug else None
    return _xml(rt.renderer.vast(decision, debug=debug), request)


def _preview(rt: Runtime, request: web.Request, test: bool, endpoint: str) -> web.Response | None:
    """A preview (``test``) shows ads counted and billed nowhere, so a player or anyone else
    sending it on a live server would get them for free: like an explanation, it needs the
    admin bearer token (the 401 returned); then it is counted in ``vastserver_previews_total``
    alone (the decision metrics leave it out, so ad-ops previewing do not move fill rate).
    None: go on."""
    if not test:
        return None
    if not _may_explain(request):
        return _explain_refused("test", TEST_NEEDS)
    rt.metrics.previews_by(endpoint).inc()
    return None


def _may_explain(request: web.Request) -> bool:
    """``/decide`` and ``debug=1`` list every candidate (line items, advertisers, prices)
    and cost far more than a request's deadline on a large catalog: by default only the
    admin bearer token gets them (``VASTSERVER_DEBUG_ACCESS=open`` opens them)."""
    return _rt(request).settings.open_debug or _authorized(request)


_BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
"""What a 401 asks for (RFC 7235 §3.1: a 401 carries a challenge)."""


TEST_NEEDS = "a test request (a preview: its ads are shown, and counted and billed nowhere)"


def _explain_refused(field: str, what: str = "a decision explanation") -> web.Response:
    body = {
        "error": "unauthorized",
        "field": field,
        "why": f"{what} needs 'Authorization: Bearer <VASTSERVER_ADMIN_TOKEN>' "
        "(or VASTSERVER_DEBUG_ACCESS=open)",
    }
    return web.json_response(body, status=401, headers=_BEARER_CHALLENGE)


def _deadline(rt: Runtime, budget_ms: int | None = None) -> float:
    """Event-loop time by which the decision must be made: ``VASTSERVER_DEADLINE_MS`` from
    now, or ``budget_ms`` (a caller's shorter limit, OpenRTB ``tmax``)."""
    ms = rt.settings.deadline_ms if budget_ms is None else budget_ms
    return asyncio.get_running_loop().time() + ms / 1000


async def decide_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    if not _may_explain(request):
        return _explain_refused("Authorization")
    try:
        req = _ad_request(request)
    except ParamError as e:
        return _bad_request(e)
    if (refused := _preview(rt, request, req.test, "decide")) is not None:
        return refused
    decision = await rt.service.decide(
        req, request_id=REQUEST_ID.get(), explain=True, deadline=_deadline(rt)
    )
    return web.json_response(decision_json(decision, request_id=REQUEST_ID.get()))


async def vmap_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    q = _query(request)
    try:
        client = client_info(request.headers, request.remote, q)
        vq = parse_vmap_query(q)
        targeting = parse_targeting(q, client, tcf_vendor_id=rt.settings.tcf_vendor_id)
    except ParamError as e:
        return _bad_request(e)
    targeting = _locate(rt, targeting)
    rules = rt.service.snapshot.catalog.rules_for(q.get("placement"))
    try:
        midrolls = vmap_midrolls(vq, rules)
    except ParamError as e:
        return _bad_request(e)
    breaks = plan_breaks(
        rules,
        midrolls,
        preroll=vq.preroll,
        postroll=vq.postroll,
        preroll_duration_s=vq.preroll_duration_s,
        midroll_duration_s=vq.midroll_duration_s,
        postroll_duration_s=vq.postroll_duration_s,
        duration_s=vq.pod_duration_s,
        max_ads=vq.max_ads,
        vast_version=targeting.vast_version,
    )
    if targeting.session is None:
        targeting = replace(targeting, session=new_ad_serving_id(rt.rng))
    session = targeting.session or ""
    q = _carried_to_tags(q, targeting.permissions)

    def as_vast(params: Mapping[str, str]) -> AdRequest:  # what each tag's /vast will parse
        return parse_vast_request(
            params,
            client,
            rules,
            require_https=rt.settings.require_https_media,
            tcf_vendor_id=rt.settings.tcf_vendor_id,
        )

    try:
        # Every break's tag is checked as /vast will check it, inline or not: an inline
        # VMAP sends the breaks left at its deadline as tags.
        tags, first = rt.renderer.tag_queries(
            breaks, q, session=session, max_query=MAX_QUERY, check=as_vast
        )
    except ParamError as e:
        return _bad_request(e)
    if first is not None and first.debug and not _may_explain(request):
        return _explain_refused("debug")  # inline, or in every break's tag
    # (its tags carry test=1: they need the token too)
    if (refused := _preview(rt, request, targeting.test, "vmap")) is not None:
        return refused
    version = DEFAULT_VAST_VERSION if first is None else first.vast_version
    if not vq.inline or first is None:
        return _xml(
            rt.renderer.vmap_tags(breaks, tags, session=session, vast_version=version), request
        )
    # The breaks are decided as their tags would be (ad duration rules included), with
    # the geolocated device and the privacy resolved by its country (as the tags' /vast
    # resolves it); those that play past the horizon go out as tags.
    base = replace(
        first,
        device=targeting.device,
        privacy=targeting.privacy,
        permissions=targeting.permissions,
    )
    horizon_s = rt.settings.token_max_age_s / INLINE_HORIZON_DIVISOR
    near = [b for b in breaks if _plays_within(b, vq.content_duration_s, horizon_s)]
    decisions = await rt.service.decide_stream(base, near, deadline=_deadline(rt))
    decisions += [None] * (len(breaks) - len(decisions))
    body = rt.renderer.vmap_inline(
        breaks, decisions, tags, session=session, debug=base.debug, vast_version=version
    )
    return _xml(body, request)


def _carried_to_tags(q: dict[str, str], allowed: Permissions) -> dict[str, str]:
    """The VMAP's parameters less what its consent (or ``lmt``) forbids the decision to use:
    the ad tags would repeat a viewer's IFA and segments in every break's URL (to the
    player, the stitcher and their logs) for a ``/vast`` that ignores them anyway."""
    dropped = {
        name
        for name, ok in (("device_id", allowed.device_id), ("segments", allowed.segments))
        if not ok
    }
    return {k: v for k, v in q.items() if k not in dropped}


INLINE_HORIZON_DIVISOR = 4
"""An ``inline=1`` VMAP puts a pod inline only for a break due within a quarter of
``VASTSERVER_TOKEN_MAX_AGE`` of content time (6 hours by default); later ones go out as
ad tags, decided when the player fetches them. An inline pod's tokens are signed when the
VMAP is served, and the break plays no sooner than its offset (later when the viewer
pauses): one played past the token max age would answer 403 ``expired`` and its
impression would never count. The margin leaves three times the offset for pauses."""


def _plays_within(b: PlannedBreak, content_s: float | None, horizon_s: float) -> bool:
    """Whether break ``b`` is due within ``horizon_s`` seconds of content; a post-roll of
    content of unknown length is not."""
    if b.position is BreakPosition.PRE:
        return True
    at = content_s if b.position is BreakPosition.POST else b.offset_s
    return at is not None and at <= horizon_s


OpenRtbDecision = tuple[OpenRtbPod, Decision, dict[str, Any] | None]
"""The parsed BidRequest, its decision and the decision's explanation (``debug``, else None)."""


async def _openrtb_decision(request: web.Request, endpoint: str) -> OpenRtbDecision | web.Response:
    """What ``/openrtb2/pod`` and ``/openrtb2/auction`` share up to the answer: the
    BidRequest parsed (a 400 naming the field), the debug and preview gates (401), and the
    pod decided within ``tmax`` (reserved and counted as any decision)."""
    rt = _rt(request)
    body = await request.read()
    try:
        client = client_info(request.headers, request.remote)
        pod = parse_bid_request(
            body,
            client,
            rt.service.snapshot.catalog.rules_for,
            require_https=rt.settings.require_https_media,
            tcf_vendor_id=rt.settings.tcf_vendor_id,
            currency=rt.service.snapshot.catalog.currency,
        )
    except ParamError as e:
        return _bad_request(e)
    located = _locate(rt, pod.request)
    if endpoint == "openrtb_auction" and pod.hybrid_imps is not None:
        # each bid names its imp: the ads must split among the imps (a dynamic imp's poddur)
        located = replace(located, brk=replace(located.brk, imps=pod.hybrid_imps))
    per_s, per_ad, by_duration = pod.pod_floors
    req = replace(
        located,
        floor_cpm_per_s=per_s,
        floor_cpm=auction_floor_cpm(pod) if endpoint == "openrtb_auction" else per_ad,
        duration_floors=by_duration,
        slot_floors=pod.slot_floors,
    )
    if req.debug and not _may_explain(request):
        return _explain_refused(pod.debug_field)
    if (refused := _preview(rt, request, req.test, endpoint)) is not None:
        return refused
    if endpoint == "openrtb_auction" and (why := excluded(pod, rt.settings.openrtb_seat)):
        # The request takes no bid of ours: no-bid before deciding (nothing reserved).
        if not req.debug:
            return web.Response(status=204)
        answer = no_bid(
            pod,
            bidid=new_ad_serving_id(rt.rng),
            currency=rt.service.snapshot.catalog.currency,
            debug={"request_id": REQUEST_ID.get(), "filled": False, "no_bid": why},
        )
        return _answer(json.dumps(answer, separators=(",", ":")), "application/json", request)
    if req.session is None:
        req = replace(req, session=new_ad_serving_id(rt.rng))
    deadline = _deadline(rt, pod.decision_budget_ms(rt.settings.deadline_ms))
    decision = await rt.service.decide(req, request_id=REQUEST_ID.get(), deadline=deadline)
    debug = decision_json(decision, request_id=REQUEST_ID.get()) if req.debug else None
    return pod, decision, debug


OPENRTB_VERSION = "2.6"
"""The ``X-OpenRTB-Version`` every answer of the OpenRTB endpoints carries (the version of
the BidRequest they read and of the BidResponse ``/openrtb2/auction`` writes)."""


async def openrtb_pod_handler(request: web.Request) -> web.StreamResponse:
    """OpenRTB 2.6 BidRequest for one CTV pod in, the VAST pod out (same pipeline)."""
    decided = await _openrtb_decision(request, "openrtb_pod")
    if isinstance(decided, web.Response):
        return decided
    _, decision, debug = decided
    return _xml(_rt(request).renderer.vast(decision, debug=debug), request)


async def openrtb_auction_handler(request: web.Request) -> web.StreamResponse:
    """The same BidRequest and decision as ``/openrtb2/pod``, answered with an OpenRTB 2.6
    BidResponse (:mod:`vastserver.bidresponse`): a bid per ad, its VAST alone in ``adm``.
    No ad: 204 and no body (OpenRTB's no-bid); with ``debug``, a 200 BidResponse without
    ``seatbid`` carrying the explanation."""
    decided = await _openrtb_decision(request, "openrtb_auction")
    if isinstance(decided, web.Response):
        return decided
    pod, decision, debug = decided
    if not decision.ads and debug is None:
        return web.Response(status=204)
    rt = _rt(request)
    adms = [rt.renderer.vast(replace(decision, ads=(ad,))) for ad in decision.ads]
    answer = bid_response(
        pod,
        decision,
        adms,
        bidid=new_ad_serving_id(rt.rng),
        seat=rt.settings.openrtb_seat,
        currency=rt.service.snapshot.catalog.currency,
        exp_s=rt.renderer.expires_for(decision),
        debug=debug,
    )
    return _answer(json.dumps(answer, separators=(",", ":")), "application/json", request)


def _verify(rt: Runtime, raw: str | None, event: str) -> AdToken:
    """The token of a beacon or click that came on ``event``'s path (signed for its scope)."""
    return verify(
        raw or "",
        rt.keyring,
        now=int(rt.clock().timestamp()),
        max_age_s=rt.settings.token_max_age_s,
        event=event,
    )


STORE_UNAVAILABLE = "store_unavailable"
"""A beacon's result when the store could not count it: answered 503, so the player retries."""
REDIRECTED_UNCOUNTED = "redirected_uncounted"
"""A click's result when the store could not count it: the viewer is redirected all the same
(a 503 would strand her), so nothing retries it and the click is never counted."""


async def _count(
    rt: Runtime,
    request: web.Request,
    event: str,
    token: AdToken,
    error_code: int | None,
    unavailable: str = STORE_UNAVAILABLE,
) -> web.StreamResponse | None:
    """Count a verified beacon once; None when done, else the response to send (503). A
    beacon the store cannot count is labelled ``unavailable`` (metric and record)."""
    try:
        result = await rt.delivery.on_beacon(event, token, rt.service.snapshot.catalog)
    except StoreUnavailable:
        rt.metrics.beacons_by(event, unavailable).inc()
        _record_beacon(rt, request, event, token, False, unavailable, error_code)
        return web.Response(status=503, text="try again", headers={"Retry-After": "1"})
    label = "ok" if result.counted else ("replay" if result.replay else result.reason)
    rt.metrics.beacons_by(event, label).inc()
    _record_beacon(rt, request, event, token, result.counted, label, error_code)
    return None


async def beacon_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    event = request.match_info["event"]
    if event not in EVENTS:
        rt.metrics.beacons_by("unknown", "bad_event").inc()
        return web.Response(status=400, text="unknown event")
    q = request.query  # first value wins, as in _query; no copy on the hot path
    raw_token, error_code = beacon_counting_params(q)
    if PARAM_TOKEN not in q:
        # Tokenless beacons: the no-fill <Error> and VMAP break events. Advisory only.
        if event in ("error", "breakStart", "breakEnd"):
            rt.metrics.beacons_by(event, "advisory").inc()
            _record_beacon(rt, request, event, None, False, "advisory", error_code)
            return web.Response(status=204)
        rt.metrics.beacons_by(event, "malformed").inc()
        return web.Response(status=400, text="missing tk")
    try:
        token = _verify(rt, raw_token, event)
    except TokenError as e:
        rt.metrics.beacons_by(event, e.kind.value).inc()
        if rt.log_sampler():
            log_event(log, "beacon_rejected", beacon=event, why=e.kind.value, caller=request.remote)
        status = 400 if e.kind is TokenErrorKind.MALFORMED else 403
        return web.Response(status=status, text=e.kind.value)
    failed = await _count(rt, request, event, token, error_code)
    return failed or web.Response(status=204)


def _record_beacon(
    rt: Runtime,
    request: web.Request,
    event: str,
    token: AdToken | None,
    counted: bool,
    result: str,
    error_code: int | None,
) -> None:
    """Every beacon goes to the event log, counted or not (replays are evidence too); but
    the uncounted ones (anyone can send replays and tokenless beacons, without end) only
    within ``rt.uncounted_log``, the rest counted as dropped (``rate_limited``). Runs
    after the count: whatever the record holds, the beacon's answer stays the same. The ad
    of a viewer who refused tracking (its token's ``lmt``: ``lmt=1``, the all-zero IFA, no
    GDPR consent to a device identifier) leaves no device IP or user agent in the log, and
    only the network of its caller (:func:`ip_prefix`): a player calling us directly is the
    device."""
    if isinstance(rt.events, NullSink):
        return  # no log: not even the record's construction
    if not counted and rt.uncounted_log is not None and not rt.uncounted_log.allow():
        rt.metrics.events_dropped.inc_by_reason(1, DROP_RATE_LIMITED)
        return
    params = beacon_log_params(request.query)  # what only the log reads
    refused = token is not None and token.lmt
    device_ip, ua = (None, None) if refused else _beacon_device(request)
    try:
        rt.events.append(
            beacon_record(
                event,
                token,
                counted=counted,
                result=result,
                caller_ip=ip_prefix(request.remote) if refused else request.remote,
                device_ip=device_ip,
                device_user_agent=ua[:MAX_LOGGED_UA] if ua else None,
                error_code=error_code,
                at=rt.clock().isoformat(),
                reason=params.reason,
                session=params.session,
                break_id=params.break_id,
                playhead_ms=params.playhead_ms,
            )
        )
    except (TypeError, ValueError, RuntimeError):  # unencodable, or the log is closing
        log_event(log, "beacon_not_logged", logging.ERROR, beacon=event, exc_info=True)
        rt.metrics.events_dropped.inc_by_reason(1, DROP_UNRECORDABLE)


MAX_LOGGED_UA = 1024
"""A beacon's device user agent is logged up to this many characters."""


def _beacon_device(request: web.Request) -> tuple[str | None, str | None]:
    """The device IP and UA of a beacon, read as ``/vast`` reads them (:func:`client_info`):
    ``X-Device-*`` from an SSAI caller, else ``X-Forwarded-For`` / the peer and ``User-Agent``
    (a stitcher or a player behind a proxy). A malformed ``X-Device-IP``, a 400 for ``/vast``,
    only leaves the IP out: the beacon has been answered already."""
    try:
        client = client_info(request.headers, request.remote)
    except ParamError:
        ua = request.headers.get("X-Device-User-Agent") or request.headers.get("User-Agent")
        return None, header_text(ua) if ua else None
    return client.device_ip, client.device_user_agent


async def click_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    raw_token, _ = beacon_counting_params(_query(request))
    try:
        token = _verify(rt, raw_token, "click")
    except TokenError as e:
        rt.metrics.beacons_by("click", e.kind.value).inc()
        late = _signed_click(rt, raw_token) if e.kind is TokenErrorKind.EXPIRED else None
        if late is not None and late.click_url:
            # Too old to count, but ours: the viewer still reaches the advertiser (the
            # destination is the one we signed), uncounted, rather than a 403 page.
            _record_beacon(rt, request, "click", late, False, e.kind.value, None)
            return _click_redirect(rt, late.click_url, late.ad_serving_id)
        if rt.log_sampler():
            log_event(
                log, "beacon_rejected", beacon="click", why=e.kind.value, caller=request.remote
            )
        status = 400 if e.kind is TokenErrorKind.MALFORMED else 403
        return web.Response(status=status, text=e.kind.value)
    if not token.click_url:  # nothing to redirect to: a store outage's 503 gets a retry
        failed = await _count(rt, request, "click", token, None)
        return failed or web.Response(status=204)
    # A click that cannot be counted right now still takes the viewer to the advertiser,
    # so nothing retries it: it is lost, and labelled so (not store_unavailable's 503).
    await _count(rt, request, "click", token, None, REDIRECTED_UNCOUNTED)
    return _click_redirect(rt, token.click_url, token.ad_serving_id)


def _signed_click(rt: Runtime, raw: str | None) -> AdToken | None:
    """An expired click token whose signature holds (for the click scope), else None."""
    try:
        return verify(
            raw or "", rt.keyring, now=int(rt.clock().timestamp()), max_age_s=2**40, event="click"
        )
    except TokenError:
        return None


def _click_redirect(rt: Runtime, click_url: str, ad_serving_id: str) -> web.Response:
    location = fill_click_macros(
        click_url,
        now=rt.clock(),
        cachebuster=rt.rng.randrange(10_000_000, 100_000_000),
        ad_serving_id=ad_serving_id,
    )
    # returned, not raised: a raised HTTPFound's traceback holds the frames in a cycle
    return web.Response(status=302, headers={"Location": ascii_url(location)})


async def reload_model_handler(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return _unauthorized()
    models = _rt(request).service.models
    if models.model_path is None:
        return web.json_response({"error": "no model configured"}, status=409)
    ok = await models.reload()
    if ok:
        _reload_the_other_workers(_rt(request), _rt(request).sigusr1)
    body: dict[str, Any] = {"version": models.primary.version, "reloaded": ok}
    if not ok:  # why, as a refused catalog reload lists its issues
        body |= {"error": "model_invalid", "issues": [models.rejected or "rejected"]}
    return web.json_response(body, status=200 if ok else 422)


async def line_items_handler(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return _unauthorized()
    rt = _rt(request)
    catalog = rt.service.snapshot.catalog
    li_id = request.match_info.get("id")
    if li_id is None:
        return await _list_line_items(request, rt, catalog)
    if li_id not in catalog.line_items:
        return web.json_response({"error": "not_found", "id": li_id[:128]}, status=404)
    try:
        stats = await rt.delivery.line_item_stats(catalog, [li_id])
    except StoreUnavailable:
        return _store_unavailable()
    return web.json_response(stats[0])


def _store_unavailable() -> web.Response:
    return web.json_response({"error": "store_unavailable"}, status=503)


async def _list_line_items(
    request: web.Request, rt: Runtime, catalog: Catalog
) -> web.StreamResponse:
    """``GET /admin/line-items``: the JSON array of every line item's stats (or the page
    ``offset`` and ``limit`` ask for), streamed a chunk at a time as
    :meth:`DeliveryControl.line_item_pages` reads them (yielding to serving in between),
    byte for byte what one ``json_response`` of the whole list was. The first chunk is read
    before the status is sent: a store that is down then is a 503. One that fails later
    cuts the connection before the array is closed (with chunked encoding, before its last
    chunk), so that no client takes a short list for the whole."""
    try:
        offset, limit = parse_page(request.query)
    except ParamError as e:
        return _bad_request(e)
    pages = rt.delivery.line_item_pages(catalog, offset, limit)
    try:
        try:
            chunk = await anext(pages, None)
        except StoreUnavailable:
            return _store_unavailable()
        resp = web.StreamResponse(headers={"X-Total-Count": str(len(catalog.line_items))})
        # set here: the edge middleware sets it once the handler returns, too late for a
        # response already sent
        resp.headers["X-Request-Id"] = REQUEST_ID.get() or _new_request_id()
        resp.content_type = "application/json"
        resp.charset = "utf-8"
        await resp.prepare(request)
        sent = 0
        try:
            await resp.write(b"[")
            while chunk is not None:
                if chunk:  # json.dumps(list)'s own separators: the same bytes as before
                    text = json.dumps(chunk)[1:-1]
                    await resp.write((", " + text if sent else text).encode())
                    sent += len(chunk)
                chunk = await anext(pages, None)
            await resp.write(b"]")
        except StoreUnavailable as e:
            log_event(
                log,
                "line_items_cut",
                logging.WARNING,
                sent=sent,
                error=str(e)[:200],
                detail="the store failed mid-listing: the connection was cut",
            )
            if request.transport is not None:
                request.transport.abort()
        except ConnectionError:
            pass  # the client went away: nothing more to send
        except Exception:  # the status went out: no other answer can follow, only a cut
            log.exception("line_items_cut")
            if request.transport is not None:
                request.transport.abort()
        return resp
    finally:
        await pages.aclose()


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    snap = rt.service.snapshot
    models = rt.service.models
    body: dict[str, Any] = {
        "ready": rt.ready,
        "catalog": {"version": snap.catalog.version, "line_items": len(snap.catalog.line_items)},
        "model": {
            "configured": models.configured,
            "ready": models.ready,
            "scorer": models.primary.name,
            "version": models.primary.version,
            "error": models.error,
            "shadow": None
            if rt.service.models.shadow is None
            else rt.service.models.shadow.version,
            "experiment": models.experiment,
        },
        # Informational: without its store an instance still serves (caps fail open,
        # budgets closed), which beats every instance leaving the load balancer at once.
        "store": {"backend": rt.store.name, "reachable": await _store_reachable(rt.store)},
    }
    return web.json_response(body, status=200 if rt.ready else 503)


async def _store_reachable(store: Store) -> bool:
    try:
        return await within(store, store.ping(), READYZ_STORE_TIMEOUT_S)
    except TimeoutError:
        return False


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    rt = _rt(request)
    resp = web.Response(body=rt.metrics.render())
    resp.content_type = "text/plain"
    resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return resp


def metrics_app(main: web.Application) -> web.Application:
    """A side app answering ``GET /metrics`` with ``main``'s metrics, for a worker's own
    port (``VASTSERVER_METRICS_PORT``): workers sharing the main port each count their
    own requests, and a scrape there reaches one of them."""
    side = web.Application()
    side[RUNTIME] = main[RUNTIME]
    side.router.add_get("/metrics", metrics_handler)
    return side


def _unauthorized() -> web.Response:
    """The admin API's 401, with the challenge RFC 7235 §3.1 requires of one."""
    return web.json_response({"error": "unauthorized"}, status=401, headers=_BEARER_CHALLENGE)


def _authorized(request: web.Request) -> bool:
    import hmac

    token = _rt(request).settings.admin_token
    got = request.headers.get("Authorization", "")
    # the scheme is case-insensitive (RFC 7235 §2.1): "bearer" and "BEARER" are "Bearer"
    if token is None or got[:7].lower() != "bearer ":
        return False
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: encode them back the same
    # way (a byte that is not UTF-8 would otherwise raise, and answer 503 instead of 401)
    given = got[7:].encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, token.encode())


async def reload_catalog_handler(request: web.Request) -> web.StreamResponse:
    if not _authorized(request):
        return _unauthorized()
    rt = _rt(request)
    try:
        snap = await rt.service.reload_catalog_in_thread()
    except CatalogError as e:
        issues = [str(i) for i in e.errors]
        _log_reload_rejected(issues, logging.WARNING, "admin")
        return web.json_response({"error": "catalog_invalid", "issues": issues}, status=422)
    except OSError as e:
        _log_reload_rejected([str(e)], logging.WARNING, "admin")
        return web.json_response({"error": "catalog_unreadable", "why": str(e)}, status=422)
    _reload_the_other_workers(rt, rt.sigusr2)
    return web.json_response({"version": snap.catalog.version})


SUPERVISOR_PID: int | None = None
"""In a worker of ``serve --workers N``: the process that forked it (set before it starts)."""


def _reload_the_other_workers(rt: Runtime, reload: SignalReload) -> None:
    """An admin reload reaches one worker (the one its connection landed on): with several,
    ask the supervisor to send them all the reload's signal (SIGUSR2 for the catalog alone,
    SIGUSR1 for the model alone: what the admin reload did here, no more), as that signal to
    the server does; this worker, which has just reloaded, lets it pass (a 100k catalog
    takes seconds to load). Only while the supervisor is still this worker's parent: once it
    died, the process that adopted the worker (init, as root PID 1) must not get a signal
    meant for it."""
    if rt.settings.workers > 1:
        if SUPERVISOR_PID is None or os.getppid() != SUPERVISOR_PID:
            log_event(
                log,
                "supervisor_gone",
                logging.WARNING,
                supervisor=SUPERVISOR_PID,
                detail="the reload reached this worker alone",
            )
            return
        reload.skip = True
        os.kill(SUPERVISOR_PID, reload.signum)


# ---------------------------------------------------------------------------- factory


class StartupErrors(Exception):
    """What loading found wrong in more than one file at start-up, told together (each
    exception listing every problem of its file), so that one start finds them all."""

    def __init__(self, errors: Sequence[Exception]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(f"{type(e).__name__}: {e}" for e in self.errors))


def _load_catalog_and_geo(settings: Settings) -> tuple[Catalog, GeoLookup]:
    """The catalog and the geo database; when both are bad, :class:`StartupErrors` says
    what is wrong with each (one bad file raises its own error)."""
    errors: list[Exception] = []
    geo: GeoLookup | None = None
    catalog: Catalog | None = None
    try:
        geo = open_geo(settings.geo_path)
    except GeoError as e:
        errors.append(e)
    try:
        catalog = load_catalog(settings.catalog_path)
    except CatalogError as e:
        errors.append(e)
    if catalog is None or geo is None:
        if isinstance(geo, MaxMindLookup):
            geo.close()
        raise errors[0] if len(errors) == 1 else StartupErrors(errors)
    return catalog, geo


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = system_clock,
    rng: random.Random | None = None,
    background_pacing: bool = True,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the app. ``background_pacing=False`` leaves the pacing and completion-rate
    updates to the caller (a simulator driving them on its own clock). ``monotonic`` times
    the rate limit of uncounted beacons' records (real seconds, whatever ``clock`` says)."""
    metrics = Metrics()
    catalog, geo = _load_catalog_and_geo(settings)
    snapshot = build_snapshot(catalog, str(settings.catalog_path), clock())
    keyring = Keyring.from_secrets(settings.secrets)
    urls = TrackingUrls(settings.public_url)
    renderer = Renderer(
        settings.template_dir,
        urls=urls,
        keyring=keyring,
        progress_offsets_s=settings.progress_offsets_s,
        token_max_age_s=settings.token_max_age_s,
    )
    rng = rng or random.SystemRandom()
    # the store's expiry clock: time.time is system_clock's timestamp, without a datetime
    store_clock = time.time if clock is system_clock else (lambda: clock().timestamp())
    inner = open_store(
        settings.redis_url,
        clock=store_clock,
        max_keys=settings.memory_max_keys,
        claim_window_s=claim_window_s(settings.token_max_age_s),
        redis_pool_size=settings.redis_pool_size,
    )
    if isinstance(inner, MemoryStore):
        metrics.watch_store_evictions(lambda: inner.evictions, lambda: inner.forgotten)
        if settings.state_file is not None:
            state_lock = StateLock(settings.state_file)
            try:
                restored = load_state(inner, settings.state_file)
            except StateFileError:
                state_lock.release()
                raise
            log_event(log, "state_restored", path=str(settings.state_file), keys=restored)
    store = TimedStore(
        inner,
        lambda op, dt: metrics.store_seconds_by(op).observe(dt),
    )
    delivery = DeliveryControl(
        store,
        clock=clock,
        rng=rng,
        token_max_age_s=settings.token_max_age_s,
        separation=SeparationRules(
            creative_breaks=settings.separation_breaks,
            creative_minutes=settings.separation_minutes,
            competitive_breaks=settings.competitive_separation_breaks,
        ),
        metrics=metrics,
    )
    events: EventSink = NullSink()
    if settings.event_log_dir is not None:
        events = EventLog(
            settings.event_log_dir,
            clock=lambda: clock().timestamp(),
            commit_interval_s=settings.event_log_commit_ms / 1000,
            retention_s=None
            if settings.event_log_retention_days is None
            else settings.event_log_retention_days * 86_400,
            on_drop=lambda n, why: _events_dropped(metrics, n, why),
        )
        log_ = events  # read when /metrics is scraped
        metrics.event_log_pending.set_function(lambda: float(log_.stats()["pending"]))
        metrics.event_log_failing.set_function(
            lambda: 0.0 if log_.stats()["last_error"] is None else 1.0
        )
    models = ModelManager(
        metrics,
        model_path=settings.model_path,
        shadow_path=settings.shadow_model_path,
        shadow_sample=settings.shadow_sample,
        experiment=settings.experiment,
        arms=settings.arms,
        rng=random.Random(rng.random()),
    )
    service = AdService(
        snapshot,
        models=models,
        candidate_limit=settings.candidate_limit,
        clock=clock,
        metrics=metrics,
        keyring=keyring,
        delivery=delivery,
        rng=rng,
        events=events,
    )
    rt = Runtime(
        settings=settings,
        service=service,
        renderer=renderer,
        keyring=keyring,
        metrics=metrics,
        clock=clock,
        rng=rng,
        geo=geo,
        store=store,
        delivery=delivery,
        events=events,
        uncounted_log=None
        if settings.uncounted_log_rate is None
        else RateLimit(settings.uncounted_log_rate, settings.uncounted_log_rate, clock=monotonic),
    )
    app = web.Application(
        middlewares=[edge_mw],
        client_max_size=MAX_BODY,
    )
    app[RUNTIME] = rt
    # A HEAD is safe by HTTP's rules: it must not make a decision (which reserves caps and
    # budget) or count a beacon, so these routes answer it 405 (aiohttp adds HEAD to GET
    # routes unless told not to).
    app.router.add_get("/vast", vast_handler, name="vast", allow_head=False)
    app.router.add_get("/vmap", vmap_handler, name="vmap", allow_head=False)
    app.router.add_get("/decide", decide_handler, name="decide", allow_head=False)
    app.router.add_post("/openrtb2/pod", openrtb_pod_handler, name="openrtb_pod")
    app.router.add_post("/openrtb2/auction", openrtb_auction_handler, name="openrtb_auction")
    app.router.add_get("/t/{event}", beacon_handler, name="beacon", allow_head=False)
    app.router.add_get("/c", click_handler, name="click", allow_head=False)
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    if settings.metrics_port is None:
        # With a metrics port of its own, /metrics is served there alone: not to anyone
        # who reaches the public ad port.
        app.router.add_get("/metrics", metrics_handler, name="metrics")
    app.router.add_post("/admin/catalog/reload", reload_catalog_handler, name="admin_reload")
    app.router.add_post("/admin/model/reload", reload_model_handler, name="admin_model_reload")
    # no HEAD (405): a streamed list's body would go out after HEAD's headers
    app.router.add_get(
        "/admin/line-items", line_items_handler, name="admin_line_items", allow_head=False
    )
    app.router.add_get(
        "/admin/line-items/{id}", line_items_handler, name="admin_line_item", allow_head=False
    )
    app.cleanup_ctx.append(_resources)
    if settings.state_file is not None and isinstance(inner, MemoryStore):
        app.cleanup_ctx.append(
            _state_saver(inner, settings.state_file, settings.state_save_s, state_lock, metrics)
        )
    app.cleanup_ctx.append(_loop_lag)
    if background_pacing:
        app.cleanup_ctx.append(_pacing)
    app.cleanup_ctx.append(_model_watch)
    app.cleanup_ctx.append(_readiness)
    app.cleanup_ctx.append(_sighup)
    return app


def _events_dropped(metrics: Metrics, count: int, reason: str) -> None:
    """EventLog drop callback (runs on its writer thread): a metric and a log line."""
    metrics.events_dropped.inc_by_reason(count, reason)
    log_event(log, "event_log_dropped", logging.ERROR, count=count, reason=reason)


async def _loop_lag(app: web.Application) -> AsyncIterator[None]:
    """Sample how late the event loop wakes a 0.5 s timer: the lag every request also sees."""
    metrics = app[RUNTIME].metrics
    loop = asyncio.get_running_loop()

    async def sample() -> None:
        while True:
            t = loop.time()
            await asyncio.sleep(0.5)
            metrics.loop_lag.observe(max(0.0, loop.time() - t - 0.5))

    task = asyncio.create_task(sample(), name="loop-lag")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """Close the store and flush the event log when the app stops (after in-flight requests)."""
    rt = app[RUNTIME]
    yield
    await rt.store.close()
    if isinstance(rt.events, EventLog):
        await asyncio.to_thread(rt.events.close)


STATE_SAVE_FAILED = web.AppKey("state_save_failed", bool)
"""Set when the last state-file save at shutdown failed: the process exits 1."""


def _state_saver(
    store: MemoryStore, path: Path, every_s: float, lock: StateLock, metrics: Metrics
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Write the in-memory store's state file every ``every_s`` and once more on shutdown,
    after the last request (this context unwinds before ``_resources`` closes the store);
    the state lock is held until then."""

    async def save(reason: str) -> bool:
        t = time.perf_counter()
        try:
            keys = await save_state(store, path)
        except Exception as e:
            metrics.state_saves.labels("failed").inc()
            log_event(
                log, "state_save_failed", logging.ERROR, path=str(path), why=repr(e), reason=reason
            )
            return False
        metrics.state_saves.labels("ok").inc()
        log_event(
            log,
            "state_saved",
            logging.INFO if reason == "shutdown" else logging.DEBUG,
            path=str(path),
            keys=keys,
            seconds=round(time.perf_counter() - t, 3),
            reason=reason,
        )
        return True

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        stop = asyncio.Event()

        async def periodic() -> None:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), every_s)
                except TimeoutError:
                    await save("periodic")

        task = asyncio.create_task(periodic(), name="state-saver")
        yield
        stop.set()
        await task  # a save under way finishes first: two never write at once
        app[STATE_SAVE_FAILED] = not await save("shutdown")
        lock.release()

    return ctx


async def _model_watch(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    if rt.settings.model_watch_s <= 0 or rt.service.models.model_path is None:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(
        rt.service.models.watch(rt.settings.model_watch_s, stop), name="model-watch"
    )
    yield
    stop.set()
    await task


async def _pacing(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    stop = asyncio.Event()
    task = asyncio.create_task(
        rt.delivery.run_pacing(lambda: rt.service.snapshot.catalog, stop), name="pacing"
    )
    yield
    stop.set()
    await task


async def _readiness(app: web.Application) -> AsyncIterator[None]:
    rt = app[RUNTIME]
    rt.ready = True
    yield
    rt.ready = False


def reload_from_signal(rt: Runtime, reload: SignalReload | None = None) -> None:
    """SIGHUP (``reload`` defaults to ``rt.sighup``): reload the catalog and the model, in the
    background; SIGUSR1 (``rt.sigusr1``): the model alone; SIGUSR2 (``rt.sigusr2``): the
    catalog alone. Whatever fails validation is
    logged and the old one keeps serving. Signals that arrive while a reload runs make one
    more reload after it, not one each (a burst of SIGHUPs queued a full catalog load
    apiece)."""
    reload = rt.sighup if reload is None else reload
    if reload.skip:  # the echo of this worker's own admin reload (see above)
        reload.skip = False
        return
    if reload.task is not None and not reload.task.done():
        reload.again = True
        return
    task = asyncio.get_running_loop().create_task(_reload_on_signal(rt, reload))
    reload.task = task
    rt.background.add(task)
    task.add_done_callback(rt.background.discard)


async def _reload_on_signal(rt: Runtime, reload: SignalReload) -> None:
    while True:
        if reload.model:
            await rt.service.models.reload()
        if reload.catalog:
            await _reload_catalog_logged(rt)
        if not reload.again:
            return
        reload.again = False


async def _reload_catalog_logged(rt: Runtime) -> None:
    """The service logs a reload it installs (``catalog_reload``); this logs a rejection."""
    try:
        await rt.service.reload_catalog_in_thread()
    except (CatalogError, OSError) as e:
        problems = [str(i) for i in e.errors] if isinstance(e, CatalogError) else [str(e)]
        _log_reload_rejected(problems, logging.ERROR, "signal")


def _log_reload_rejected(problems: list[str], level: int, via: str) -> None:
    log_event(
        log,
        "catalog_reload_rejected",
        level,
        problems=problems[:50],
        problem_count=len(problems),
        via=via,
    )


async def _sighup(app: web.Application) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    rt = app[RUNTIME]
    reloads = {signal.SIGHUP: rt.sighup, signal.SIGUSR1: rt.sigusr1, signal.SIGUSR2: rt.sigusr2}
    before = {sig: signal.getsignal(sig) for sig in RELOAD_SIGNALS}
    try:
        for sig, reload in reloads.items():
            loop.add_signal_handler(sig, reload_from_signal, rt, reload)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        yield
        return
    for sig in take_early_signals():
        reload_from_signal(rt, reloads[sig])
    yield
    for sig, handler in before.items():
        loop.remove_signal_handler(sig)  # this leaves the default action (terminate)
        if callable(handler) or handler == signal.SIG_IGN:
            signal.signal(sig, handler)  # e.g. the holder, while the process shuts down
