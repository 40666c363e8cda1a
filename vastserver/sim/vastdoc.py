"""Reading VMAP and VAST documents the way a player or stitcher does (stdlib XML only)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "DocumentError",
    "VastAd",
    "VastPod",
    "VmapBreak",
    "parse_duration_ms",
    "parse_vast",
    "parse_vmap",
    "query_param",
]


class DocumentError(ValueError):
    """A VMAP/VAST document the simulated player cannot use."""


@dataclass(frozen=True, slots=True)
class VmapBreak:
    break_id: str
    time_offset: str
    """``start``, ``end`` or ``HH:MM:SS.mmm``."""
    tag_url: str
    tracking: dict[str, str] = field(default_factory=dict)
    """``breakStart``/``breakEnd``/``error`` URL."""

    @property
    def offset_s(self) -> float | None:
        """Seconds into the content; None for ``start``/``end``."""
        if self.time_offset in ("start", "end"):
            return None
        return parse_duration_ms(self.time_offset) / 1000


@dataclass(frozen=True, slots=True)
class VastAd:
    sequence: int
    creative_id: str
    duration_ms: int
    impression_url: str
    error_url: str | None
    tracking: dict[str, str]
    """Event name -> URL (the first one of each event)."""
    click_url: str | None
    advertiser: str | None


@dataclass(frozen=True, slots=True)
class VastPod:
    ads: tuple[VastAd, ...]
    """In play order (``Ad@sequence``)."""
    error_url: str | None
    """The root ``<Error>`` of an empty response."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(el: ET.Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    t = el.text.strip()
    return t or None


def _child(el: ET.Element, name: str) -> ET.Element | None:
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def parse_duration_ms(text: str) -> int:
    """``HH:MM:SS`` or ``HH:MM:SS.mmm`` to milliseconds."""
    try:
        hms, _, frac = text.strip().partition(".")
        h, m, s = (int(x) for x in hms.split(":"))
        ms = int((frac or "0").ljust(3, "0")[:3])
    except ValueError:
        raise DocumentError(f"bad duration {text!r}") from None
    return ((h * 60 + m) * 60 + s) * 1000 + ms


def _parse(body: str | bytes) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as e:
        raise DocumentError(f"not XML: {e}") from None


def parse_vmap(body: str | bytes) -> list[VmapBreak]:
    root = _parse(body)
    if _local(root.tag) != "VMAP":
        raise DocumentError(f"root is <{_local(root.tag)}>, not <vmap:VMAP>")
    out: list[VmapBreak] = []
    for b in _children(root, "AdBreak"):
        src = _child(b, "AdSource")
        tag = _text(_child(src, "AdTagURI")) if src is not None else None
        if tag is None:
            raise DocumentError("AdBreak without an AdTagURI (inline VMAP is not simulated)")
        tracking: dict[str, str] = {}
        events = _child(b, "TrackingEvents")
        if events is not None:
            for t in _children(events, "Tracking"):
                url = _text(t)
                if url:
                    tracking.setdefault(t.get("event", ""), url)
        out.append(
            VmapBreak(
                break_id=b.get("breakId", ""),
                time_offset=b.get("timeOffset", ""),
                tag_url=tag,
                tracking=tracking,
            )
        )
    return out


def parse_vast(body: str | bytes) -> VastPod:
    root = _parse(body)
    if _local(root.tag) != "VAST":
        raise DocumentError(f"root is <{_local(root.tag)}>, not <VAST>")
    ads: list[VastAd] = []
    for n, ad in enumerate(_children(root, "Ad"), start=1):
        inline = _child(ad, "InLine")
        if inline is None:
            raise DocumentError("only InLine ads are simulated")
        imp = _text(_child(inline, "Impression"))
        creatives = _child(inline, "Creatives")
        creative = _child(creatives, "Creative") if creatives is not None else None
        linear = _child(creative, "Linear") if creative is not None else None
        if imp is None or creative is None or linear is None:
            raise DocumentError("ad without Impression or Linear creative")
        duration = _text(_child(linear, "Duration"))
        if duration is None:
            raise DocumentError("Linear without Duration")
        tracking: dict[str, str] = {}
        events = _child(linear, "TrackingEvents")
        if events is not None:
            for t in _children(events, "Tracking"):
                url = _text(t)
                if url:
                    tracking.setdefault(t.get("event", ""), url)
        clicks = _child(linear, "VideoClicks")
        ads.append(
            VastAd(
                sequence=int(ad.get("sequence") or n),
                creative_id=creative.get("id", ""),
                duration_ms=parse_duration_ms(duration),
                impression_url=imp,
                error_url=_text(_child(inline, "Error")),
                tracking=tracking,
                click_url=_text(_child(clicks, "ClickThrough")) if clicks is not None else None,
                advertiser=_text(_child(inline, "Advertiser")),
            )
        )
    ads.sort(key=lambda a: a.sequence)
    return VastPod(ads=tuple(ads), error_url=_text(_child(root, "Error")))


def query_param(url: str, name: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get(name)
    return values[0] if values else None
