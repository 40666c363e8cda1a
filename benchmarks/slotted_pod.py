"""Time of the structured-pod optimiser (``pod._slotted_pod``) on adversarial shapes.

``python -m benchmarks.slotted_pod [--requests N] [--seed S]``

Each shape is N requests (half of them with tied values) of 48 candidates in 30 separation
groups, as many as ``VASTSERVER_CANDIDATE_LIMIT`` lets through, with random tiers and slot
prices (first-only and no-first ads). Printed per shape: the median and worst wall time of
``build_pod`` and how many requests ran out of the search budget (``PodResult.exact`` False).

Shapes: ``30-15-15`` (three slots of exactly 30, 15, 15 s); ``8x30/15`` (eight slots of
exactly 30 or 15 s); ``8xnested`` (eight slots of ``maxduration`` 10-60 s, nested: every ad
fitting a short slot fits the longer ones); ``8xmixed`` (eight slots, each one of the
above kinds or min/max windows).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from vastserver.pipeline.pod import PodConstraints, PodItem, SlotRule, build_pod

NEG_INF = float("-inf")


def _items(rng: random.Random, durations: list[int], tied: bool, n: int = 48) -> list[PodItem]:
    return [
        PodItem(
            key=i,
            duration_ms=rng.choice(durations) * 1000,
            value=rng.choice([5.0, 10.0]) if tied else rng.uniform(1, 50),
            tier=rng.choice([1, 1, 2]),
            group=f"g{rng.randrange(30)}",
            value_first=rng.choice([None, None, NEG_INF, 60.0]),
            value_last=rng.choice([None, None, NEG_INF]),
            middle_allowed=rng.random() < 0.9,
        )
        for i in range(n)
    ]


def _shape(name: str, rng: random.Random) -> tuple[tuple[SlotRule, ...], list[int]]:
    if name == "30-15-15":
        return tuple(SlotRule(required_s=frozenset({s})) for s in (30, 15, 15)), [15, 30]
    if name == "8x30/15":
        secs = [rng.choice([15, 30]) for _ in range(8)]
        return tuple(SlotRule(required_s=frozenset({s})) for s in secs), [15, 30]
    if name == "8xnested":
        secs = [rng.choice([10, 15, 20, 30, 45, 60]) for _ in range(8)]
        return tuple(SlotRule(max_ms=s * 1000) for s in secs), [5, 10, 15, 20, 30, 45, 60]
    rules: list[SlotRule] = []
    for _ in range(8):
        kind = rng.randrange(3)
        s = rng.choice([10, 15, 20, 30])
        if kind == 0:
            rules.append(SlotRule(required_s=frozenset({s})))
        elif kind == 1:
            rules.append(SlotRule(max_ms=s * 1000))
        else:
            rules.append(SlotRule(min_ms=(s - 5) * 1000, max_ms=(s + 5) * 1000))
    return tuple(rules), [5, 10, 15, 20, 25, 30]


SHAPES = ("30-15-15", "8x30/15", "8xnested", "8xmixed")


def run(requests: int, seed: int) -> None:
    for name in SHAPES:
        rng = random.Random(seed)
        times: list[float] = []
        inexact = 0
        for r in range(requests):
            rules, durations = _shape(name, rng)
            items = _items(rng, durations, tied=r % 2 == 1)
            pod_s = sum(60 if x.max_ms is None else x.max_ms // 1000 for x in rules)
            c = PodConstraints(pod_s * 1000, len(rules), slots=rules)
            t0 = time.perf_counter()
            res = build_pod(items, c)
            times.append(time.perf_counter() - t0)
            inexact += not getattr(res, "exact", True)
        print(
            f"{name:10} median {statistics.median(times) * 1000:7.2f} ms"
            f"  worst {max(times) * 1000:7.2f} ms  over budget {inexact}/{requests}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    run(a.requests, a.seed)


if __name__ == "__main__":
    main()
