"""Prometheus metrics. Each app owns its registry so several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from vastserver.eventlog import DROP_REASONS
from vastserver.pipeline.reasons import Reason

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "vastserver_requests_total",
            "HTTP requests by endpoint and outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "vastserver_request_seconds",
            "Request latency by endpoint and outcome",
            ["endpoint", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pods = Counter(
            "vastserver_pods_total", "Ad pods decided, by filled or empty", ["result"], registry=r
        )
        self.previews = Counter(
            "vastserver_previews_total",
            "Previews answered (test=1, OpenRTB test = 1), by endpoint: counted here only, "
            "not in the pod, ad, rejection or experiment counters",
            ["endpoint"],
            registry=r,
        )
        self.ads_per_pod = Histogram(
            "vastserver_ads_per_pod",
            "Ads in each decided pod",
            buckets=(0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20),
            registry=r,
        )
        self.seconds_requested = Counter(
            "vastserver_pod_seconds_requested_total",
            "Break seconds asked for",
            registry=r,
        )
        self.seconds_filled = Counter(
            "vastserver_pod_seconds_filled_total", "Break seconds filled with ads", registry=r
        )
        self.rejections = Counter(
            "vastserver_rejections_total",
            "Candidates dropped, by pipeline stage and reason",
            ["stage", "reason"],
            registry=r,
        )
        self.beacons = Counter(
            "vastserver_beacons_total",
            "Tracking beacons by event and result",
            ["event", "result"],
            registry=r,
        )
        self.catalog_info = Gauge(
            "vastserver_catalog_line_items",
            "Line items in the loaded catalog snapshot",
            ["version"],
            registry=r,
        )
        self.catalog_reloads = Counter(
            "vastserver_catalog_reloads_total", "Catalog reloads by result", ["result"], registry=r
        )
        self.state_saves = Counter(
            "vastserver_state_saves_total",
            "Writes of the in-memory store's state file, by result (ok, failed)",
            ["result"],
            registry=r,
        )
        self.events_dropped = DropCounter(
            Counter(
                "vastserver_event_log_dropped_total",
                "Event-log records dropped, by reason: buffer_full (while the disk failed), "
                "closed, unrecordable, rate_limited (uncounted beacons past "
                "VASTSERVER_UNCOUNTED_LOG_RATE)",
                ["reason"],
                registry=r,
            )
        )
        self.event_log_pending = Gauge(
            "vastserver_event_log_pending_records",
            "Event-log records appended and not yet written (grows while the disk fails; past "
            "100,000 the oldest are dropped as buffer_full)",
            registry=r,
        )
        self.event_log_failing = Gauge(
            "vastserver_event_log_write_failing",
            "1 while the event log's last write failed (disk full, directory unwritable), else 0",
            registry=r,
        )
        li_labels = ["line_item"]
        self.li_delivered = Gauge(
            "vastserver_line_item_delivered_impressions",
            "Delivered impressions of in-flight line items with an impression budget (today"
            " for daily budgets)",
            li_labels,
            registry=r,
        )
        self.li_pacing_ratio = Gauge(
            "vastserver_line_item_pacing_ratio",
            "Delivered / where the pacing curve says delivery should be now",
            li_labels,
            registry=r,
        )
        self.li_throttle = Gauge(
            "vastserver_line_item_throttle",
            "Serve probability the pacing controller set (1 = unthrottled)",
            li_labels,
            registry=r,
        )
        self.li_allowance = Gauge(
            "vastserver_line_item_pacing_allowance",
            "What the last pacing pass allowed this process to serve of a paced (even or"
            " frontloaded) line item until the next pass",
            li_labels,
            registry=r,
        )
        self.li_exhausted = Gauge(
            "vastserver_line_item_exhausted",
            "1 when a budget serving checks (impressions or spend, lifetime or daily, the line"
            " item's or its campaign's) is used up: serving refuses the line item",
            li_labels,
            registry=r,
        )
        self.store_errors = Counter(
            "vastserver_store_errors_total",
            "State-store calls that failed (fail-open/closed policy applied)",
            ["op"],
            registry=r,
        )
        self.store_pool_exhausted = Counter(
            "vastserver_store_pool_exhausted_total",
            "Of vastserver_store_errors_total: calls that found every pooled Redis connection"
            " busy for the pool's wait (this process overloaded, Redis may be fine)",
            ["op"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory...
        self.in_flight = Gauge(
            "vastserver_in_flight_requests", "Decision requests being served now", registry=r
        )
        self.shed = Counter(
            "vastserver_shed_total",
            "Requests answered at once with a no-fill because too many were in flight",
            ["endpoint"],
            registry=r,
        )
        self.degradations = Counter(
            "vastserver_degradations_total",
            "Decisions that degraded to meet their deadline or survive a fault, by reason",
            ["reason"],
            registry=r,
        )
        self.refills = Counter(
            "vastserver_selection_refills_total",
            "Decisions that selected candidates again because the counters refused every "
            "kept candidate of a separation group",
            registry=r,
        )
        self.store_seconds = Histogram(
            "vastserver_store_seconds",
            "State-store call latency by operation",
            ["op"],
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.model_seconds = Histogram(
            "vastserver_model_seconds",
            "Scoring latency per request (one batched call)",
            ["scorer", "version"],
            buckets=(0.0001, 0.0003, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=r,
        )
        self.loop_lag = Histogram(
            "vastserver_event_loop_lag_seconds",
            "How late the event loop runs a timer (sampled every 0.5 s)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=r,
        )
        self.model_info = Gauge(
            "vastserver_model_info",
            "The scorer serving decisions (1 for the active one)",
            ["scorer", "version"],
            registry=r,
        )
        self.model_fallback = Counter(
            "vastserver_model_fallback_total",
            "Times the price scorer stood in for the model, by reason",
            ["reason"],
            registry=r,
        )
        self.model_reloads = Counter(
            "vastserver_model_reloads_total",
            "Model bundle reloads: ok (swapped in) or rejected (the old one keeps serving)",
            ["result"],
            registry=r,
        )
        for result in ("ok", "rejected"):  # both series from the start: alerts see a 0
            self.model_reloads.labels(result)
        self.model_score = Histogram(
            "vastserver_model_score",
            "Predicted completion of the ads served (drift shows here first)",
            ["scorer", "version"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=r,
        )
        self.experiment_decisions = Counter(
            "vastserver_experiment_decisions_total",
            "Decisions per experiment arm",
            ["experiment", "arm", "result"],
            registry=r,
        )
        self.rejected: dict[Reason, Counter] = {
            reason: self.rejections.labels(reason.stage.value, reason.value) for reason in Reason
        }
        """Each reason's child of ``rejections``, bound once (``labels()`` costs ~2.5 µs and
        a decision counts dozens of rejections)."""

        self.requests_by = Children(self.requests)
        self.latency_by = Children(self.latency)
        self.beacons_by = Children(self.beacons)
        self.store_seconds_by = Children(self.store_seconds)
        self.pods_by = Children(self.pods)
        self.previews_by = Children(self.previews)
        self.model_score_by = Children(self.model_score)
        self.model_seconds_by = Children(self.model_seconds)

    def keep_model_versions(self, scorers: Collection[tuple[str, str]]) -> None:
        """Drop the ``vastserver_model_seconds`` and ``vastserver_model_score`` series of
        every ``(scorer, version)`` but ``scorers`` (those still serving or shadowing): each
        model swap would otherwise leave the old version's series in every scrape for good."""
        self.model_seconds_by.keep(scorers)
        self.model_score_by.keep(scorers)

    def watch_store_evictions(
        self, evictions: Callable[[], int], forgotten: Callable[[], int]
    ) -> None:
        """Export ``vastserver_store_evictions_total`` and
        ``vastserver_store_claims_forgotten_total``, read at each scrape (the in-memory
        store's LRU evictions, and the beacon claims it refused since such a claim may have
        been evicted)."""
        self.registry.register(_EvictionCollector(evictions, forgotten))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EvictionCollector(Collector):
    def __init__(self, evictions: Callable[[], int], forgotten: Callable[[], int]) -> None:
        self._evictions = evictions
        self._forgotten = forgotten

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "vastserver_store_evictions",
            "Keys the in-memory store evicted to stay within its size (they read 0 after)",
            value=self._evictions(),
        )
        yield CounterMetricFamily(
            "vastserver_store_claims_forgotten",
            "Beacon claims refused (not counted) because an earlier claim of the same token "
            "may have been evicted",
            value=self._forgotten(),
        )


M = TypeVar("M", Counter, Histogram, Gauge)


class Children(Generic[M]):
    """A labelled metric's children, memoised by label values: ``labels()`` costs ~2.5 µs,
    a dict lookup ~50 ns, and the hot paths count several per request. Only for labels
    from closed sets (route names, outcomes, reasons), as every label here is."""

    __slots__ = ("_by", "metric")

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._by: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._by.get(values)
        if child is None:
            child = self._by[values] = self.metric.labels(*values)
        return child

    def keep(self, wanted: Collection[tuple[str, ...]]) -> None:
        """Remove every child but ``wanted`` (from the metric too: it leaves the exposition).
        Only for a metric whose children are all made here."""
        for values in [v for v in self._by if v not in wanted]:
            del self._by[values]
            self.metric.remove(*values)


class DropCounter:
    """Adapter for ``EventLog(on_drop=...)``: count dropped records by reason, one of the
    closed set :data:`vastserver.eventlog.DROP_REASONS` (each series exported from the
    start, at 0: an alert on one sees it rise; another reason is a KeyError)."""

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self._by = {reason: counter.labels(reason) for reason in DROP_REASONS}

    def inc_by_reason(self, count: int, reason: str) -> None:
        self._by[reason].inc(count)
