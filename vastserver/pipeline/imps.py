"""Splitting a decided pod among the imps of an OpenRTB hybrid pod.

A hybrid pod (OpenRTB 2.6 7.6) mixes structured imps, one ad each (``slotinpod`` 1 the ad
played first, -1 the last, 0 any), with dynamic imps, each taking up to ``maxseq`` ads
whose seconds fit its ``poddur``. The pod optimiser sees one break of the summed seconds
and ads (:mod:`vastserver.pipeline.pod`), so the pod it builds may fit no split among the
imps (15 + 20 + 15 s for a dynamic imp of 45 s). :func:`fit_imps` turns it into one that
does: the optimiser's play order when it fits, else another order of the same ads (a
different ad played first or last, where the line items allow it there), else with the
fewest and least valuable ads left out (the lowest tier first: a sponsorship or a
guaranteed ad stays before a standard one, as in the optimiser). Pure and bounded: it runs
only for hybrid pods, within :data:`MAX_TRIES` assignments and :data:`MAX_PACK_STEPS` steps
of bin packing in all, whatever the request (a pod of 14 imps whose dynamic imps fit no
packing took 10 s when the steps were bounded per packing only).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from vastserver.pipeline.pod import PodItem, capacity_seconds

MAX_TRIES = 500
"""Assignments :func:`fit_imps` tries (each order of each set of ads it considers) before
it settles for leaving out the least valuable ad, one at a time, in the play order it has
(a pod of n ads has up to n x n orders worth trying: first and last ad)."""
MAX_PACK_STEPS = 5_000
"""Steps of bin packing (the ads among several dynamic imps) one :func:`fit_imps` call
takes in all, over every order and set of ads it tries; once spent, no packing is found
and ads are left out (never a bid past a ``poddur``)."""

_NEG_INF = float("-inf")


@dataclass(frozen=True, slots=True)
class PodImp:
    """One imp of a hybrid pod, in request order."""

    imp_id: str
    role: str | None = None
    """A structured imp's ``slotinpod``: ``"first"``, ``"last"`` or None (any place)."""
    max_ads: int = 1
    """A dynamic imp's ``maxseq``; 1 for a structured imp."""
    capacity_s: int | None = None
    """A dynamic imp's ``poddur`` in whole seconds (rounded up, as the optimiser counts a
    break), each ad taking its seconds rounded up; None for a structured imp (one ad, of
    any length the pod's duration rule allows)."""


def _value(items: Sequence[PodItem]) -> float:
    """The pod's value with each item at its place (-inf when one may not be there)."""
    n = len(items)
    total = 0.0
    for p, it in enumerate(items):
        if p == 0:
            v = it.first_value
        elif p == n - 1:
            v = it.last_value
        else:
            v = it.middle_value
        if v == _NEG_INF:
            return _NEG_INF
        total += v
    return total


def _pack(needs: Sequence[int], bins: Sequence[PodImp], budget: list[int]) -> list[int] | None:
    """Each need (seconds) in a bin (an index into ``bins``) with a place and the seconds
    for it, longest first; None when no packing is found within ``budget[0]`` steps (what
    is left of it after: the caller's other packings share it)."""
    order = sorted(range(len(needs)), key=lambda j: -needs[j])
    places = [b.max_ads for b in bins]
    room = [b.capacity_s or 0 for b in bins]
    out = [-1] * len(needs)
    if needs:
        # bounds that tell most packings that cannot be at once (a search would try them all)
        least = min(needs)
        fits = sum(min(p, r // least) for p, r in zip(places, room, strict=True))
        if len(needs) > fits or sum(needs) > sum(room):
            return None

    def place(t: int) -> bool:
        if t == len(order):
            return True
        if budget[0] <= 0:
            return False
        budget[0] -= 1
        j = order[t]
        tried: set[tuple[int, int]] = set()
        for b in range(len(bins)):
            state = (places[b], room[b])
            if places[b] < 1 or room[b] < needs[j] or state in tried:
                continue
            tried.add(state)
            places[b] -= 1
            room[b] -= needs[j]
            out[j] = b
            if place(t + 1):
                return True
            places[b] += 1
            room[b] += needs[j]
        return False

    return out if place(0) else None


def assign(
    items: Sequence[PodItem], imps: Sequence[PodImp], budget: list[int] | None = None
) -> list[int] | None:
    """The imp (an index into ``imps``) of each item, played in this order, or None when no
    split fits: the first ad to the ``slotinpod`` 1 imp, the last (of two or more) to the
    -1 imp; of the others, the longest to the structured imps of any place (in play
    order, the imps in request order), the rest packed into the dynamic imps. A pod of one
    ad with no first imp and nowhere else to go takes the last imp. ``budget``: the steps
    of packing left (:data:`MAX_PACK_STEPS` when not given), spent in place."""
    n = len(items)
    first = next((i for i, m in enumerate(imps) if m.role == "first"), None)
    last = next((i for i, m in enumerate(imps) if m.role == "last"), None)
    anys = [i for i, m in enumerate(imps) if m.capacity_s is None and m.role is None]
    dynamic = [i for i, m in enumerate(imps) if m.capacity_s is not None]
    out = [-1] * n
    middle = list(range(n))
    if n and first is not None:
        out[0] = first
        middle.remove(0)
    if n >= 2 and last is not None:
        out[n - 1] = last
        middle.remove(n - 1)
    by_length = sorted(middle, key=lambda k: items[k].duration_ms)
    to_dynamic = by_length[: max(0, len(middle) - len(anys))]
    for k, imp in zip(sorted(by_length[len(to_dynamic) :]), anys, strict=False):
        out[k] = imp
    needs = [capacity_seconds(items[k].duration_ms) for k in to_dynamic]
    packed = _pack(
        needs, [imps[i] for i in dynamic], [MAX_PACK_STEPS] if budget is None else budget
    )
    if packed is None:
        if n == 1 and first is None and last is not None:
            return [last]
        return None
    for k, b in zip(to_dynamic, packed, strict=True):
        out[k] = dynamic[b]
    return out


def _orders(n: int, ends: tuple[bool, bool]) -> Iterator[list[int]]:
    """Play orders worth trying: the given one, then each with another ad moved to the
    front (a first imp) and/or to the back (a last imp). The order of the ads in between
    changes no split (they are assigned by length)."""
    yield list(range(n))
    firsts: Sequence[int | None] = range(n) if ends[0] else (None,)
    lasts: Sequence[int | None] = range(n) if ends[1] and n > 1 else (None,)
    for f in firsts:
        for b in lasts:
            if f is not None and f == b:
                continue
            rest = [k for k in range(n) if k not in (f, b)]
            yield [*([] if f is None else [f]), *rest, *([] if b is None else [b])]


@dataclass(slots=True)
class _Search:
    imps: Sequence[PodImp]
    tries: int = MAX_TRIES
    budget: list[int] = field(default_factory=lambda: [MAX_PACK_STEPS])
    """Steps of packing left to every assignment of this search."""

    def best(self, items: Sequence[PodItem]) -> tuple[list[PodItem], list[int], float] | None:
        """The most valuable order of ``items`` that some split fits (the given order first
        among equals), with each item's imp and the value; None when none is found."""
        ends = (
            any(m.role == "first" for m in self.imps),
            any(m.role == "last" for m in self.imps),
        )
        found: tuple[list[PodItem], list[int], float] | None = None
        for tried, order in enumerate(_orders(len(items), ends)):
            if tried and (self.tries <= 0 or self.budget[0] <= 0):
                break  # (the given order is always tried)
            self.tries -= 1
            ordered = [items[k] for k in order]
            value = _value(ordered)
            if value == _NEG_INF or (found is not None and value <= found[2]):
                continue
            imps = assign(ordered, self.imps, self.budget)
            if imps is not None:
                found = (ordered, imps, value)
        return found


def fit_imps(
    items: Sequence[PodItem], imps: Sequence[PodImp]
) -> tuple[list[PodItem], list[int], list[PodItem]]:
    """The pod's items (in play order) as a split among ``imps`` fits them: the items kept,
    in their play order, the imp of each (an index into ``imps``), and the items left out
    (no split takes them). Kept: all of them when an order of them fits; else all but one,
    of the lowest tier, whose absence leaves the most value; else, one at a time, all but
    the least valuable of the lowest tier, until a split fits."""
    search = _Search(imps)
    kept = list(items)
    dropped: list[PodItem] = []
    while kept:
        got = search.best(kept)
        if got is not None:
            return got[0], got[1], dropped
        if len(dropped) == 0:
            options = []
            for j in range(len(kept)):
                got = search.best([*kept[:j], *kept[j + 1 :]])
                if got is not None:
                    options.append((-kept[j].tier, got[2], -j, got))
            if options:
                *_, neg_j, (order, fitted, _) = max(options, key=lambda o: o[:3])
                return order, fitted, [kept[-neg_j]]
        j = min(range(len(kept)), key=lambda k: (kept[k].tier, kept[k].value, -k))
        dropped.append(kept.pop(j))
    return [], [], dropped
