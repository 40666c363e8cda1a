"""Settings from ``VASTSERVER_*`` environment variables and command-line overrides.

Every problem is collected before start-up stops, so one run shows all of them.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from vastserver.logs import event
from vastserver.models import ArmsError, ArmSpec, parse_arms
from vastserver.pipeline.matching import CANDIDATE_LIMIT
from vastserver.store.memory import MAX_KEYS

log = logging.getLogger("vastserver.settings")


def _project_root() -> Path:
    """Where ``templates/`` and ``fixtures/`` live: ``VASTSERVER_HOME``, else the source
    checkout this package runs from, else the working directory (an installed package)."""
    home = os.environ.get("VASTSERVER_HOME")
    if home:
        return Path(home)
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "templates").is_dir():
        return checkout
    return Path.cwd()


PROJECT_ROOT = _project_root()
DEFAULT_CATALOG = PROJECT_ROOT / "fixtures" / "demo-catalog.json"
DEFAULT_MODEL = PROJECT_ROOT / "fixtures" / "demo-model"
TEMPLATE_DIR = PROJECT_ROOT / "templates"


DEFAULT_UNCOUNTED_LOG_RATE = 200
"""``VASTSERVER_UNCOUNTED_LOG_RATE``'s default: records a second (and burst) per process."""
DEFAULT_OPENRTB_SEAT = "vastserver"
"""``VASTSERVER_OPENRTB_SEAT``'s default: the ``seatbid.seat`` of ``/openrtb2/auction``."""
MAX_OPENRTB_SEAT = 64
"""Most characters of ``VASTSERVER_OPENRTB_SEAT``."""


class SettingsError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    metrics_port: int | None = None
    """Worker ``i`` (0-based) answers ``GET /metrics`` on ``metrics_port + i``; with 0, on a
    free port of its own that the system picks (the ``listening`` log line names them)."""
    tcf_vendor_id: int | None = None
    """Our IAB TCF vendor id: under the GDPR, consent strings must also consent to it."""
    gdpr_by_geo: bool = False
    """Whether a request with no GDPR signal at all from a country where the GDPR applies
    (:data:`vastserver.consent.GDPR_COUNTRIES`) is decided as under ``gdpr=1`` without
    consent; off: such a request is decided as if the GDPR did not apply."""
    public_url: str = "http://127.0.0.1:8080"
    secrets: tuple[str, ...] = ()
    """HMAC keys for tracking tokens; the first signs, all verify (key rotation)."""
    admin_token: str | None = None
    open_debug: bool = False
    """Whether ``GET /decide`` and ``debug=1`` answer anyone. By default they need the admin
    bearer token: an explanation lists every candidate (line items, advertisers, prices),
    and one over a large catalog costs far more than a request's deadline."""
    catalog_path: Path = DEFAULT_CATALOG
    model_path: Path | None = None
    """Model bundle; None serves with the price scorer. A missing or broken bundle is not a
    settings error: the server starts with the price scorer and reports the model not ready."""
    shadow_model_path: Path | None = None
    shadow_sample: float = 0.1
    experiment: str | None = None
    arms: tuple[ArmSpec, ...] = ()
    model_watch_s: float = 5.0
    """How often the model bundle's files are checked for changes (0: never)."""
    redis_url: str | None = None
    redis_pool_size: int = 64
    """Most Redis connections one process holds; a command waits up to a second for one."""
    token_max_age_s: int = 24 * 3600
    template_dir: Path = TEMPLATE_DIR
    require_https_media: bool = True
    geo_path: Path | None = None
    """CIDR CSV or MaxMind ``.mmdb`` for IP geolocation; None = the bundled demo table."""
    event_log_dir: Path | None = None
    """Directory of the durable event log; None disables it (tests of other features)."""
    event_log_commit_ms: int = 50
    event_log_retention_days: float | None = None
    """Finished event-log segments last written longer ago than this are deleted; None keeps
    them all."""
    uncounted_log_rate: int | None = DEFAULT_UNCOUNTED_LOG_RATE
    """Event-log records of uncounted beacons and clicks (replays, advisory, not counted for
    any reason) a second, per process, with a burst of as many; beyond it they are dropped
    (``vastserver_event_log_dropped_total{reason="rate_limited"}``). 0: none is logged;
    None: no limit. Counted beacons are always logged."""
    state_file: Path | None = None
    """The in-memory store's state file (caps, budgets, beacon claims across restarts);
    None keeps the state in memory only."""
    state_save_s: int = 60
    """How often the state file is written (and once more on shutdown)."""
    memory_max_keys: int = MAX_KEYS
    """Keys the in-memory store holds before it evicts the least recently used."""
    gc_sweep_s: int = 3600
    """How often ``serve``'s garbage-collector maintenance also walks the frozen heap
    (``vastserver.cli.gc_maintenance``); 0 never."""
    separation_breaks: int = 3
    """Stream separation: a creative does not play again within this many breaks..."""
    separation_minutes: int = 30
    """...nor within this many minutes of the same session."""
    competitive_separation_breaks: int = 1
    """A competitive category sits out this many breaks after it played."""
    deadline_ms: int = 150
    """Time budget of one /vast, /vmap or /decide request; past it the decision degrades."""
    max_in_flight: int = 256
    """Decision requests served at once; beyond it requests are shed with a no-fill."""
    drain_s: float = 2.0
    """On SIGTERM: seconds between turning /readyz false and closing the listener."""
    keepalive_s: int = 75
    """An idle connection is closed after this many seconds, and so is one that has not
    finished sending a request's head within them (slow headers)."""
    candidate_limit: int = CANDIDATE_LIMIT
    """Most candidates scored per request (best by price x tier; the rest are outranked)."""
    progress_offsets_s: tuple[float, ...] = ()
    """Extra ``progress`` tracking points (seconds into each ad), e.g. ``(2.0, 10.0)``."""
    openrtb_seat: str = DEFAULT_OPENRTB_SEAT
    """The ``seatbid.seat`` of every ``/openrtb2/auction`` BidResponse: the seat id the
    exchange assigned us (1-64 printable ASCII characters, no space)."""
    ephemeral_secret: bool = field(default=False, compare=False)


def _not_a_file(path: Path) -> str:
    """Why ``path`` (not a regular file) cannot be read as one."""
    return f"not a regular file: {path}" if path.exists() else f"no such file: {path}"


def default_public_url(host: str, port: int) -> str:
    """The public URL when none is set: the listening address (loopback for a wildcard
    host, an IPv6 literal in brackets). With port 0 the server puts in the port it got."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _int(problems: list[str], name: str, raw: str | None, lo: int, hi: int) -> int | None:
    if raw is None:
        return None
    try:
        v = int(raw)
    except ValueError:
        problems.append(f"{name}: not an integer: {raw!r}")
        return None
    if not lo <= v <= hi:
        problems.append(f"{name}: must be between {lo} and {hi}, got {v}")
        return None
    return v


DEFAULT_EVENT_LOG_DIR = PROJECT_ROOT / "var" / "events"
MAX_RETENTION_DAYS = 3650
MAX_UNCOUNTED_LOG_RATE = 1_000_000


def openrtb_seat_problem(raw: str) -> str | None:
    """Why ``raw`` cannot be ``VASTSERVER_OPENRTB_SEAT`` (None: it can): a seat id is 1 to
    :data:`MAX_OPENRTB_SEAT` printable ASCII characters without a space, as exchanges
    assign them (``vastserver``, ``12345``, ``acme-ctv_01``), so it reaches the exchange
    exactly as written, never mangled by whitespace or an encoding."""
    if len(raw) > MAX_OPENRTB_SEAT or not all("!" <= ch <= "~" for ch in raw):
        return (
            f"VASTSERVER_OPENRTB_SEAT: a seat id, 1 to {MAX_OPENRTB_SEAT} printable ASCII "
            f"characters without spaces, got {raw[:80]!r}"
        )
    return None


def event_log_dir(raw: str | None) -> Path | None:
    """The event log directory a ``VASTSERVER_EVENT_LOG_DIR`` value (None: unset) names:
    :data:`DEFAULT_EVENT_LOG_DIR` when unset, None when ``off`` (also ``none`` or empty)."""
    if raw is None:
        return DEFAULT_EVENT_LOG_DIR
    return None if raw.lower() in ("", "off", "none") else Path(raw)


def _bundle_problems(what: str, bundle: Path) -> list[str]:
    from vastserver.ml.check import ModelError, check_bundle  # no xgboost in this process

    try:
        check_bundle(bundle)
    except ModelError as e:
        return [f"{what}: {str(e)[:300]}"]
    return []


def load_settings(
    env: Mapping[str, str],
    overrides: Mapping[str, object] | None = None,
    *,
    check_bundles: bool = False,
) -> Settings:
    """Build settings: ``overrides`` (command line) win over ``env``; defaults last. An
    override no setting reads is a problem (a misspelt name must not pass for applied).

    ``check_bundles`` (``serve``): validate each experiment arm's model bundle too (in a
    spawned process, see :func:`vastserver.ml.check.check_bundle`); a bad one is a settings
    problem, since a worker could not start with it."""
    o = dict(overrides or {})
    problems: list[str] = []
    read: set[str] = set()

    def pick(key: str, env_name: str) -> str | None:
        read.add(key)
        v = o.get(key)
        if v is not None:
            return str(v)
        return env.get(env_name) or None

    def integer(key: str, env_name: str, lo: int, hi: int, default: int) -> int:
        v = _int(problems, env_name, pick(key, env_name), lo, hi)
        return default if v is None else v

    def boolean(key: str, env_name: str, default: bool) -> bool:
        raw = pick(key, env_name)
        if raw is None:
            return default
        if raw.lower() not in ("0", "1", "true", "false"):
            problems.append(f"{env_name}: must be 0 or 1")
        return raw.lower() in ("1", "true")

    host = pick("host", "VASTSERVER_HOST") or "127.0.0.1"
    port = _int(problems, "port (VASTSERVER_PORT)", pick("port", "VASTSERVER_PORT"), 0, 65535)
    workers = _int(
        problems, "workers (VASTSERVER_WORKERS)", pick("workers", "VASTSERVER_WORKERS"), 1, 64
    )
    port = 8080 if port is None else port
    metrics_port = _int(
        problems,
        "metrics_port (VASTSERVER_METRICS_PORT)",
        pick("metrics_port", "VASTSERVER_METRICS_PORT"),
        0,
        65535,
    )
    if metrics_port:  # 0: each worker's port is picked by the system, none is in a range
        last = metrics_port + (workers or 1) - 1
        if last > 65535:
            problems.append(
                f"VASTSERVER_METRICS_PORT: {workers} workers need ports {metrics_port}-{last}"
            )
        elif metrics_port <= port <= last:
            problems.append(
                f"VASTSERVER_METRICS_PORT: ports {metrics_port}-{last} include VASTSERVER_PORT"
            )
    tcf_vendor_id = _int(
        problems, "VASTSERVER_TCF_VENDOR_ID", pick("tcf_vendor_id", "VASTSERVER_TCF_VENDOR_ID"),
        1, 65535,
    )  # fmt: skip
    public = pick("public_url", "VASTSERVER_PUBLIC_URL")
    if public is None:
        public = default_public_url(host, port)
    parts = urlsplit(public)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        problems.append(
            f"VASTSERVER_PUBLIC_URL: must be an absolute http(s) base URL, got {public!r}"
        )
    public = public.rstrip("/")

    raw_secret = pick("secret", "VASTSERVER_SECRET")
    ephemeral = False
    if raw_secret is None:
        keys: tuple[str, ...] = (secrets.token_urlsafe(32),)
        ephemeral = True
    else:
        keys = tuple(s.strip() for s in raw_secret.split(",") if s.strip())
        if not keys or any(len(k) < 16 for k in keys):
            problems.append("VASTSERVER_SECRET: each comma-separated key needs 16+ characters")

    admin = pick("admin_token", "VASTSERVER_ADMIN_TOKEN")
    if admin is not None:
        # a token read from a mounted secret file often ends in a newline, which no
        # Authorization header carries (aiohttp strips header values): it could never match
        admin = admin.strip()
        if len(admin) < 16:
            problems.append("VASTSERVER_ADMIN_TOKEN: needs 16+ characters")
    debug_access = pick("debug_access", "VASTSERVER_DEBUG_ACCESS") or "admin"
    if debug_access not in ("admin", "open"):
        problems.append(f"VASTSERVER_DEBUG_ACCESS: admin or open, got {debug_access[:40]!r}")

    catalog = Path(pick("catalog", "VASTSERVER_CATALOG") or DEFAULT_CATALOG)
    if not catalog.is_file():
        problems.append(f"VASTSERVER_CATALOG: {_not_a_file(catalog)}")
    model_raw = pick("model", "VASTSERVER_MODEL")
    model: Path | None
    if model_raw is None:
        model = DEFAULT_MODEL if DEFAULT_MODEL.is_dir() else None
    elif model_raw.lower() in ("off", "none", "price"):
        model = None
    else:
        model = Path(model_raw)
    shadow_raw = pick("shadow_model", "VASTSERVER_SHADOW_MODEL")
    shadow = Path(shadow_raw) if shadow_raw else None
    if shadow is not None and not shadow.is_dir():
        problems.append(f"VASTSERVER_SHADOW_MODEL: no such directory: {shadow}")
    shadow_pct = integer("shadow_sample_pct", "VASTSERVER_SHADOW_SAMPLE_PCT", 0, 100, 10)
    watch_s = integer("model_watch_s", "VASTSERVER_MODEL_WATCH_S", 0, 3600, 5)
    experiment = pick("experiment", "VASTSERVER_EXPERIMENT")
    arms_raw = pick("arms", "VASTSERVER_ARMS")
    arms: tuple[ArmSpec, ...] = ()
    if experiment is not None and arms_raw is None:
        problems.append("VASTSERVER_ARMS: an experiment needs arms, e.g. 'model:50,price:50'")
    if arms_raw is not None:
        try:
            arms = tuple(parse_arms(arms_raw))
        except ArmsError as e:
            problems.append(f"VASTSERVER_ARMS: {e}")
        for a in arms:
            if a.bundle is not None and not a.bundle.is_dir():
                problems.append(f"VASTSERVER_ARMS: arm {a.name}: no such bundle {a.bundle}")
            elif a.bundle is not None and check_bundles:
                problems += _bundle_problems(f"VASTSERVER_ARMS: arm {a.name}", a.bundle)
        if experiment is None:
            problems.append("VASTSERVER_EXPERIMENT: arms need an experiment name")

    redis_url = pick("redis", "VASTSERVER_REDIS_URL")
    if redis_url is not None and urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        problems.append(f"VASTSERVER_REDIS_URL: must be a redis:// URL, got {redis_url!r}")
    if workers is not None and workers > 1 and redis_url is None:
        # Forked workers cannot share the in-memory store: each would keep its own caps,
        # budgets and beacon claims, so a replay reaching another worker would count again.
        problems.append(
            f"VASTSERVER_WORKERS: {workers} workers need VASTSERVER_REDIS_URL (--redis): "
            "each worker's in-memory store would count frequency caps, budgets and beacon "
            "replays on its own; share them through Redis or run one worker"
        )
    max_age = integer("token_max_age", "VASTSERVER_TOKEN_MAX_AGE", 60, 30 * 86400, 86400)
    require_https = boolean("require_https_media", "VASTSERVER_REQUIRE_HTTPS_MEDIA", True)
    gdpr_by_geo = boolean("gdpr_by_geo", "VASTSERVER_GDPR_BY_GEO", False)

    geo_raw = pick("geo", "VASTSERVER_GEO_DB")
    geo_path = Path(geo_raw) if geo_raw else None
    if geo_path is not None and not geo_path.is_file():
        problems.append(f"VASTSERVER_GEO_DB: {_not_a_file(geo_path)}")

    event_dir_raw = pick("event_log", "VASTSERVER_EVENT_LOG_DIR")
    event_dir = event_log_dir(event_dir_raw)
    commit_ms = integer("event_log_commit_ms", "VASTSERVER_EVENT_LOG_COMMIT_MS", 1, 10_000, 50)
    retention_raw = pick("event_log_retention_days", "VASTSERVER_EVENT_LOG_RETENTION_DAYS")
    retention_days = None
    if retention_raw is not None:
        try:
            retention_days = float(retention_raw)
        except ValueError:
            retention_days = math.nan
        if not 0 < retention_days <= MAX_RETENTION_DAYS:  # NaN too
            problems.append(
                "VASTSERVER_EVENT_LOG_RETENTION_DAYS: days, a number above 0 and at most "
                f"{MAX_RETENTION_DAYS} (fractions allowed), got {retention_raw[:40]!r}"
            )
            retention_days = None
    uncounted_raw = pick("uncounted_log_rate", "VASTSERVER_UNCOUNTED_LOG_RATE")
    uncounted_rate: int | None = DEFAULT_UNCOUNTED_LOG_RATE
    if uncounted_raw is not None:
        try:
            uncounted_rate = int(uncounted_raw)
        except ValueError:
            uncounted_rate = -2
        if not -1 <= uncounted_rate <= MAX_UNCOUNTED_LOG_RATE:
            problems.append(
                "VASTSERVER_UNCOUNTED_LOG_RATE: records a second, an integer from 0 (log none)"
                f" to {MAX_UNCOUNTED_LOG_RATE}, or -1 (no limit), got {uncounted_raw[:40]!r}"
            )
            uncounted_rate = DEFAULT_UNCOUNTED_LOG_RATE
        elif uncounted_rate == -1:
            uncounted_rate = None
    state_raw = pick("state_file", "VASTSERVER_STATE_FILE")
    state_file = None
    if state_raw is not None and state_raw.lower() not in ("", "off", "none"):
        state_file = Path(state_raw)
        if state_file.is_dir():
            problems.append(f"VASTSERVER_STATE_FILE: a directory, not a file: {state_file}")
    state_save_s = integer("state_save_s", "VASTSERVER_STATE_SAVE_S", 1, 86_400, 60)
    gc_sweep_s = integer("gc_sweep_s", "VASTSERVER_GC_SWEEP_S", 0, 7 * 86_400, 3600)
    if 0 < gc_sweep_s < 600:
        problems.append(
            "VASTSERVER_GC_SWEEP_S: 0 (never) or at least 600 (a sweep is a pause of up to"
            f" ~1 s on a large catalog), got {gc_sweep_s}"
        )
    max_keys = integer(
        "memory_max_keys", "VASTSERVER_MEMORY_MAX_KEYS", 1_000, 1_000_000_000, MAX_KEYS
    )
    if state_file is not None and redis_url:
        problems.append(
            "VASTSERVER_STATE_FILE: keeps the in-memory store's state; with "
            "VASTSERVER_REDIS_URL the state lives in Redis (use its persistence)"
        )

    sep_breaks = integer("separation_breaks", "VASTSERVER_SEPARATION_BREAKS", 0, 100, 3)
    sep_minutes = integer("separation_minutes", "VASTSERVER_SEPARATION_MINUTES", 0, 1440, 30)
    comp_breaks = integer(
        "competitive_separation_breaks", "VASTSERVER_COMPETITIVE_SEPARATION_BREAKS", 0, 100, 1
    )

    deadline_ms = integer("deadline_ms", "VASTSERVER_DEADLINE_MS", 5, 10_000, 150)
    max_in_flight = integer("max_in_flight", "VASTSERVER_MAX_IN_FLIGHT", 1, 100_000, 256)
    redis_pool_size = integer("redis_pool_size", "VASTSERVER_REDIS_POOL_SIZE", 1, 10_000, 64)
    drain_ms = integer("drain_ms", "VASTSERVER_DRAIN_MS", 0, 120_000, 2000)
    keepalive_s = integer("keepalive_s", "VASTSERVER_KEEPALIVE_S", 1, 7200, 75)
    candidate_limit = integer(
        "candidate_limit", "VASTSERVER_CANDIDATE_LIMIT", 1, 100_000, CANDIDATE_LIMIT
    )

    progress: list[float] = []
    progress_raw = pick("progress_offsets", "VASTSERVER_PROGRESS_OFFSETS")
    if progress_raw:
        for part in progress_raw.split(","):
            try:
                v = float(part)
            except ValueError:
                v = -1.0
            if not 0 < v <= 600:
                problems.append(
                    "VASTSERVER_PROGRESS_OFFSETS: comma-separated seconds in (0, 600], "
                    f"got {part.strip()!r}"
                )
                break
            progress.append(v)

    seat = pick("openrtb_seat", "VASTSERVER_OPENRTB_SEAT") or DEFAULT_OPENRTB_SEAT
    if (why := openrtb_seat_problem(seat)) is not None:
        problems.append(why)

    problems += [f"{k}: no such setting" for k in sorted(set(o) - read)]
    if problems:
        raise SettingsError(problems)
    if ephemeral:
        event(
            log,
            "ephemeral_secret",
            logging.WARNING,
            detail="VASTSERVER_SECRET is not set: using a random key for this process only; "
            "tracking URLs will not verify on other instances or after a restart",
        )
    return Settings(
        host=host,
        port=port,
        workers=workers or 1,
        metrics_port=metrics_port,
        tcf_vendor_id=tcf_vendor_id,
        gdpr_by_geo=gdpr_by_geo,
        public_url=public,
        secrets=keys,
        admin_token=admin,
        open_debug=debug_access == "open",
        catalog_path=catalog,
        model_path=model,
        shadow_model_path=shadow,
        shadow_sample=shadow_pct / 100,
        experiment=experiment,
        arms=arms,
        model_watch_s=float(watch_s),
        redis_url=redis_url,
        redis_pool_size=redis_pool_size,
        token_max_age_s=max_age,
        require_https_media=require_https,
        progress_offsets_s=tuple(sorted(set(progress))),
        deadline_ms=deadline_ms,
        max_in_flight=max_in_flight,
        drain_s=drain_ms / 1000,
        keepalive_s=keepalive_s,
        candidate_limit=candidate_limit,
        event_log_dir=event_dir,
        geo_path=geo_path,
        event_log_commit_ms=commit_ms,
        event_log_retention_days=retention_days,
        uncounted_log_rate=uncounted_rate,
        state_file=state_file,
        state_save_s=state_save_s,
        gc_sweep_s=gc_sweep_s,
        memory_max_keys=max_keys,
        separation_breaks=sep_breaks,
        separation_minutes=sep_minutes,
        competitive_separation_breaks=comp_breaks,
        openrtb_seat=seat,
        ephemeral_secret=ephemeral,
    )
