"""The request mix: what CTV players and SSAI stitchers send, as replayable request lists.

A *request list* is a text file, one request a line: ``kind<TAB>path[<TAB>Header: value]...``.
Both load generators read it (``wrk`` through a Lua script, :mod:`benchmarks.loadgen`
directly) and cycle through it, so a list's proportions are the run's proportions.

Kinds:

* ``vast_pod4``: ``/vast`` asking for a 120 s break of at most 4 ads (the target's request);
* ``vast``: ``/vast`` pods of 1-8 ads (30 s per ad), 30 % of them sent by an SSAI stitcher
  (``X-Device-IP`` / ``X-Device-User-Agent``);
* ``vmap``: ``/vmap`` break schedules (ad-tag mode, as CTV players fetch them);
* ``beacon``: signed tracking URLs harvested from real VAST responses (impression, start,
  the three quartiles and complete of every ad), replayed: after the first, replays are
  answered 204 without counting, which is fine for throughput;
* the session mix interleaves them as one viewing session produces them: one VMAP per
  session of four breaks, one VAST per break, six beacons per delivered ad.

Every viewer is made up (random IFA, session id); device IPs in SSAI headers come from the
documentation ranges of the bundled geo table, so geolocation is exercised without naming a
real address (they are header values only: all traffic goes to the loopback server).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from vastserver.catalog.gen import (
    CHANNELS,
    CONTENT_IDS,
    GENRES,
    LANGUAGES,
    SEGMENTS,
    SERIES,
)
from vastserver.catalog.model import PLATFORMS

KINDS: tuple[str, ...] = ("vast_pod4", "vast", "vmap", "beacon", "mix")
BEACON_EVENTS: tuple[str, ...] = (
    "impression",
    "start",
    "firstQuartile",
    "midpoint",
    "thirdQuartile",
    "complete",
)
SSAI_SHARE = 0.30
BREAKS_PER_SESSION = 4

_DEVICE_IPS = ("203.0.113.", "198.51.100.", "192.0.2.")
_SSAI_UAS = (
    "Roku/DVP-12.5 (12.5.0.4178-46)",
    "Mozilla/5.0 (Linux; Android 9; AFTMM Build/PS7633) AppleWebKit/537.36 (KHTML, like Gecko)",
    "Mozilla/5.0 (SMART-TV; LINUX; Tizen 6.5) AppleWebKit/537.36 (KHTML, like Gecko) 85.0 TV",
    "AppleTV11,1/11.1",
)
_STITCHER_UA = "AWS Elemental MediaTailor"
_DEVICE_MIX = (("ctv", 70), ("stb", 12), ("mobile", 12), ("desktop", 6))
_COUNTRY_MIX = (("US", 80), ("CA", 6), ("GB", 6), ("AU", 4), ("DE", 4))
_RATINGS = ("TV-Y", "TV-Y7", "TV-G", "TV-PG", "TV-PG", "TV-14", "TV-14", "TV-MA")
_VERSIONS = (("4.2", 80), ("4.1", 8), ("4.0", 6), ("3.0", 6))


@dataclass(frozen=True, slots=True)
class Line:
    """One request: a kind (for per-kind statistics), a path with query, extra headers."""

    kind: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> str:
        parts = [self.kind, self.path, *(f"{k}: {v}" for k, v in self.headers)]
        if any("\t" in p or "\n" in p for p in parts):
            raise ValueError(f"tab or newline in a request line: {parts!r}")
        return "\t".join(parts)

    @staticmethod
    def decode(text: str) -> Line:
        parts = text.rstrip("\n").split("\t")
        if len(parts) < 2:
            raise ValueError(f"not a request line: {text!r}")
        headers: list[tuple[str, str]] = []
        for h in parts[2:]:
            k, sep, v = h.partition(":")
            if sep:
                headers.append((k.strip(), v.strip()))
        return Line(parts[0], parts[1], tuple(headers))


def write_lines(path: Path, lines: Iterable[Line]) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write(line.encode() + "\n")
            n += 1
    if n == 0:
        raise ValueError(f"empty request list {path}")
    return n


def read_lines(path: Path) -> list[Line]:
    with path.open(encoding="utf-8") as f:
        return [Line.decode(t) for t in f if t.strip()]


# --------------------------------------------------------------------------- generation


def _weighted(rng: random.Random, pairs: Sequence[tuple[str, int]]) -> str:
    return rng.choices([p for p, _ in pairs], [w for _, w in pairs])[0]


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _ifa(rng: random.Random) -> str:
    return f"{_hex(rng, 8)}-{_hex(rng, 4)}-4{_hex(rng, 3)}-a{_hex(rng, 3)}-{_hex(rng, 12)}"


def _content_meta(content_id: str) -> dict[str, str]:
    """What a content item is: genre, rating, series or channel, live. Fixed per content id
    (an episode does not change genre between viewers), as a publisher's CMS would send."""
    rng = random.Random(f"content:{content_id}")
    meta = {
        "genre": ",".join(rng.sample(GENRES, rng.randint(1, 2))),
        "rating": rng.choice(_RATINGS),
    }
    if rng.random() < 0.5:
        meta["series"] = rng.choice(SERIES)
    if rng.random() < 0.3:
        meta["channel"] = rng.choice(CHANNELS)
        meta["live"] = "1" if rng.random() < 0.5 else "0"
    return meta


CONTENT_META: dict[str, dict[str, str]] = {cid: _content_meta(cid) for cid in CONTENT_IDS}


def targeting(rng: random.Random) -> dict[str, str]:
    """Viewer, device and content parameters of one session."""
    device_type = _weighted(rng, _DEVICE_MIX)
    content_id = rng.choice(CONTENT_IDS)
    q: dict[str, str] = {
        "device_id": _ifa(rng),
        "ifa_type": "rida" if device_type in ("ctv", "stb") else "aaid",
        "device_type": device_type,
        "platform": rng.choice(PLATFORMS if device_type != "desktop" else ("web",)),
        "country": _weighted(rng, _COUNTRY_MIX),
        "language": rng.choice(LANGUAGES),
        "content_id": content_id,
        **CONTENT_META[content_id],
        "session": _hex(rng, 16),
    }
    if rng.random() < 0.6:
        q["segments"] = ",".join(rng.sample(SEGMENTS, rng.randint(1, 3)))
    if rng.random() < 0.05:
        q["lmt"] = "1"
    return q


def _ssai_headers(rng: random.Random) -> tuple[tuple[str, str], ...]:
    ip = rng.choice(_DEVICE_IPS) + str(rng.randint(1, 254))
    return (
        ("X-Device-IP", ip),
        ("X-Device-User-Agent", rng.choice(_SSAI_UAS)),
        ("User-Agent", _STITCHER_UA),
    )


def vast_line(rng: random.Random, *, max_ads: int, kind: str, ssai: bool, avail: int = 1) -> Line:
    q = targeting(rng)
    q.update(
        {
            "pod_duration": str(30 * max_ads),
            "max_ads": str(max_ads),
            "break": "mid",
            "avail": str(avail),
            "vast": _weighted(rng, _VERSIONS) if kind == "vast" else "4.2",
        }
    )
    headers = _ssai_headers(rng) if ssai else ()
    if ssai:
        q.pop("country", None)  # the stitcher's device IP is geolocated instead
    return Line(kind, "/vast?" + urlencode(q), headers)


def vast_pod4_lines(rng: random.Random, n: int) -> list[Line]:
    return [
        vast_line(rng, max_ads=4, kind="vast_pod4", ssai=rng.random() < SSAI_SHARE)
        for _ in range(n)
    ]


def vast_lines(rng: random.Random, n: int) -> list[Line]:
    return [
        vast_line(
            rng,
            max_ads=rng.randint(1, 8),
            kind="vast",
            ssai=rng.random() < SSAI_SHARE,
            avail=rng.randint(0, BREAKS_PER_SESSION - 1),
        )
        for _ in range(n)
    ]


def vmap_lines(rng: random.Random, n: int) -> list[Line]:
    out: list[Line] = []
    for _ in range(n):
        q = targeting(rng)
        length = rng.choice((1320, 1800, 2640, 3600))
        q["content_duration"] = str(length)
        q["cue_points"] = ",".join(str(t) for t in range(length // 4, length, length // 4))
        out.append(Line("vmap", "/vmap?" + urlencode(q)))
    return out


# --------------------------------------------------------------------------- harvesting

_AD_SPLIT = re.compile(r"<Ad[\s>]")
_IMPRESSION = re.compile(r"<Impression[^>]*>\s*<!\[CDATA\[(.*?)\]\]>", re.S)
_TRACKING = re.compile(r'<Tracking event="([A-Za-z]+)"[^>]*>\s*<!\[CDATA\[(.*?)\]\]>', re.S)
_PLAYHEAD_S = {
    "impression": 0.0,
    "start": 0.0,
    "firstQuartile": 7.5,
    "midpoint": 15.0,
    "thirdQuartile": 22.5,
    "complete": 30.0,
}


def _hms(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def expand(url: str, event: str, rng: random.Random) -> str:
    """Fill the macros a player fills and keep only path + query (the server is loopback)."""
    url = (
        url.replace("[CACHEBUSTING]", str(rng.randint(10_000_000, 99_999_999)))
        .replace("[TIMESTAMP]", str(int(time.time() * 1000)))
        .replace("[ADPLAYHEAD]", _hms(_PLAYHEAD_S.get(event, 0.0)))
    )
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def beacons_of(vast_xml: str, rng: random.Random) -> list[list[Line]]:
    """Per ad of a VAST response, its session beacons in firing order."""
    out: list[list[Line]] = []
    for chunk in _AD_SPLIT.split(vast_xml)[1:]:
        urls: dict[str, str] = {}
        imp = _IMPRESSION.search(chunk)
        if imp:
            urls["impression"] = imp.group(1)
        for m in _TRACKING.finditer(chunk):
            urls.setdefault(m.group(1), m.group(2))
        ad = [Line("beacon", expand(urls[e], e, rng)) for e in BEACON_EVENTS if e in urls]
        if ad:
            out.append(ad)
    return out


def ad_count(vast_xml: str) -> int:
    return len(_AD_SPLIT.findall(vast_xml))


@dataclass(slots=True)
class HarvestedPod:
    request: Line
    body: str
    beacons: list[list[Line]]


def session_mix(pods: Sequence[HarvestedPod], vmaps: Sequence[Line]) -> list[Line]:
    """Interleave as sessions produce them: a VMAP, then per break its VAST and its beacons."""
    out: list[Line] = []
    for i, pod in enumerate(pods):
        if i % BREAKS_PER_SESSION == 0 and vmaps:
            out.append(vmaps[(i // BREAKS_PER_SESSION) % len(vmaps)])
        out.append(pod.request)
        for ad in pod.beacons:
            out.extend(ad)
    return out


def proportions(lines: Sequence[Line]) -> dict[str, float]:
    counts: dict[str, int] = {}
    for line in lines:
        counts[line.kind] = counts.get(line.kind, 0) + 1
    total = max(1, len(lines))
    return {k: round(v / total, 4) for k, v in sorted(counts.items())}
