"""The renderer's cached ad fragments give exactly what a full template render gives."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree

from tests.conftest import DEMO_CATALOG, FIXED_NOW, ClientFactory, FakeClock, make_settings
from vastserver.app import RUNTIME, create_app
from vastserver.catalog.gen import generate_catalog
from vastserver.catalog.model import AdRules, Caption, Mezzanine
from vastserver.params import client_info, parse_vast_request
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.decide import Decision, PlacedAd
from vastserver.pipeline.schedule import plan_breaks
from vastserver.render import LINEAR_EVENTS_BY_VERSION, Renderer, VersionVM

VERSIONS = sorted(LINEAR_EVENTS_BY_VERSION)


def _runtime(catalog: Path, **overrides: Any) -> Any:
    app = create_app(
        make_settings(catalog=str(catalog), **overrides),
        clock=FakeClock(),
        rng=random.Random(3),
    )
    return app[RUNTIME]


async def _decisions(rt: Any, version: str, n: int) -> list[Decision]:
    out = []
    rng = random.Random(version)
    for i in range(n):
        q = {
            "device_id": f"viewer-{i}",
            "device_type": rng.choice(["ctv", "stb", "mobile"]),
            "country": "US",
            "pod_duration": str(30 * rng.randint(1, 6)),
            "max_ads": str(rng.randint(1, 6)),
            "vast": version,
            "session": f"s-{i}",
        }
        if i % 2:  # privacy signals, each request its own, for the macros of tag URLs
            q |= {"gdpr": "1", "gdpr_consent": f"CPtc{i}.x", "us_privacy": "1YN-"}
        rules = rt.service.snapshot.catalog.rules_for(None)
        req = parse_vast_request(q, client_info({}, "127.0.0.1"), rules)
        out.append(await rt.service.decide(req))
    return out


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("render") / "catalog.json"
    doc = generate_catalog(400, 11, now=FIXED_NOW)
    # text that must be escaped, in every kind of field the fragment carries
    icon = next(cr["icons"][0] for cr in doc["creatives"] if cr.get("icons"))
    for n, cr in enumerate(doc["creatives"]):
        if n % 3 == 0:
            cr["title"] = 'Tom & Jerry\'s <"best"> ]]> ad'
        if n % 4 == 1:
            cr.pop("click_through", None)
        if n % 5 == 2:
            cr["skip_offset"] = 5
            cr["icons"] = [
                {
                    **icon,
                    "image_url": icon["image_url"] + "?x=1&y=2",
                    "duration": 5,
                    "click_fallback_images": [
                        {
                            "image_url": f"https://cdn.example/fb/{n}.png?a=1&b=2",
                            "width": 300,
                            "height": 200,
                            "alt_text": 'Why "this" <ad> & more',
                        }
                    ],
                    "view_tracking_urls": [f"https://px.example/iv?c={n}&a=1"],
                    "click_tracking_urls": ["https://px.example/ic?x=1&y=2"],
                }
            ]
        if n % 4 == 3:
            cr["captions"] = [
                {
                    "url": f"https://cdn.example/cc/{n}.vtt?a=1&b=2",
                    "mime": "text/vtt",
                    "language": "en",
                },
                {
                    "url": f"https://cdn.example/cc/{n}.ttml",
                    "mime": "application/ttml+xml",
                    "language": "es-MX",
                },
            ]
        if n % 5 == 4 and n % 7 != 3:  # SIMID files (4.1+; not in a wrapper, below)
            cr["interactive"] = [
                {
                    "url": f"https://simid.example/{n}.html?a=1&cb=[CACHEBUSTING]",
                    "api_framework": "SIMID",
                },
                {
                    "url": f"https://simid.example/g{n}.html",
                    "api_framework": "SIMID",
                    "variable_duration": n % 4 == 1,  # may extend the ad
                },
            ]
            # the advertiser's interactiveStart pixels (4.2+), one carrying a privacy macro
            cr.setdefault("trackers", {})["interactiveStart"] = [
                f"https://px.example/is?c={n}&a=1",
                "https://dv.example/is?gdpr=${GDPR}&cb=[CACHEBUSTING]",
            ]
        if n % 3 == 1:  # third-party trackers, some of events a version lacks
            cr["trackers"] = {
                "impression": [f"https://px.example/i?c={n}&a=1", "https://dv.example/i"],
                "click": ["https://px.example/c?x=1&y=2"],
                "start": ["https://px.example/s"],
                "loaded": ["https://px.example/l"],
                "creativeView": ["https://px.example/v"],
            }
            if cr.get("skip_offset") is not None or cr.get("skip_offset_ms") is not None:
                cr["trackers"]["skip"] = ["https://px.example/k"]
        if n % 7 == 3:  # a third-party tag, served as a <Wrapper>
            for key in ("renditions", "mezzanine", "click_through", "skip_offset", "captions"):
                cr.pop(key, None)
            cr.get("trackers", {}).pop("skip", None)  # a tag cannot be skippable here
            cr["vast_tag_url"] = f"https://tp.example/vast?c={n}&a=b&ord=[CACHEBUSTING]"
            if n % 2 == 0:  # passing the request's privacy signals on to the tag's server
                cr["vast_tag_url"] += "&gdpr=${GDPR}&tc=${GDPR_CONSENT_755}&us=${US_PRIVACY}"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("version", VERSIONS)
async def test_cached_fragment_equals_full_render(catalog: Path, version: str) -> None:
    rt = _runtime(catalog, progress_offsets="5,10")
    r: Renderer = rt.renderer
    ver = VersionVM.of(version)
    # A VAST 2.0 request's break holds one ad (no pods), always the same few: its ads are
    # taken from 3.0 pods, rendered as 2.0 ones below.
    decisions = await _decisions(rt, "3.0" if version == "2.0" else version, 40)
    ads = [(d, a) for d in decisions for a in d.ads]
    assert len(ads) >= 40
    assert any(a.candidate.creative.click_through for _, a in ads)
    assert any(not a.candidate.creative.click_through for _, a in ads)
    assert any(a.candidate.creative.icons for _, a in ads)
    assert any(a.candidate.creative.verifications for _, a in ads)
    assert any(a.candidate.creative.vast_tag_url for _, a in ads)
    assert any(a.candidate.creative.trackers for _, a in ads)
    assert any(a.candidate.creative.captions for _, a in ads)
    assert any(a.candidate.creative.interactive for _, a in ads)
    assert any(a.candidate.creative.trackers and a.candidate.creative.vast_tag_url for _, a in ads)
    filled = [
        (d, a)
        for d, a in ads
        if a.candidate.creative.vast_tag_url and a.candidate.creative.privacy_macros
    ]
    assert any(d.request.privacy.tc_string for d, _ in filled)
    assert any(not d.request.privacy.tc_string for d, _ in filled)
    assert any("<Wrapper" in r._ad_full(d, a, ver, None) for d, a in ads)
    assert any("&amp;" in r._ad_full(d, a, ver, None) for d, a in ads)
    simid = any("<InteractiveCreativeFile" in r._ad_full(d, a, ver, None) for d, a in ads)
    assert simid == ver.interactive  # 4.1+
    # the advertiser's interactiveStart pixel after ours, from 4.2 (the event's first schema)
    started = any("px.example/is?c=" in r._ad_full(d, a, ver, None) for d, a in ads)
    assert started == ver.v42
    for _ in range(2):  # the second pass takes every fragment from the cache
        for d, a in ads:
            assert r._ad_fast(d, a, ver) == r._ad_full(d, a, ver, None)
    for d, a in filled:  # each request's own values, in the fast path's tag URL too
        p = d.request.privacy
        tc, us = p.tc_string or "", p.us_privacy or ""
        gdpr = "" if p.gdpr is None else str(int(p.gdpr))
        want = f"&gdpr={gdpr}&tc={tc}&us={us}]]></VASTAdTagURI>"
        assert want in r._ad_fast(d, a, ver)
    # whole documents parse and carry each ad's own tokens
    for d in decisions:
        root = etree.fromstring(r.vast(d).encode())
        imps = [e.text for e in root.iter("{*}Impression") if "/t/impression" in (e.text or "")]
        assert len(imps) == len(d.ads) == len(set(imps))


def _media_types(xml: str) -> list[str]:
    root = etree.fromstring(xml.encode())
    return [str(m.get("type")) for m in root.iter("{*}MediaFile")]


async def test_listed_mimes_filter_the_media_files_without_poisoning_the_cache(
    catalog: Path,
) -> None:
    """A request listing ``video.mimes`` gets only the MediaFiles of those types, from the
    cached fragment as from the full render; the fragment of the same ad for a request
    without mimes (or listing every type it has) keeps them all, before and after."""
    rt = _runtime(catalog)
    r: Renderer = rt.renderer
    ver = VersionVM.of("4.2")
    d = next(
        d
        for d in await _decisions(rt, "4.2", 20)
        if d.ads and not d.ads[0].candidate.creative.vast_tag_url
    )
    ad = d.ads[0]
    types = {m.mime for m in ad.candidate.creative.renditions}
    assert {"video/mp4", "application/x-mpegURL"} <= types
    mp4 = replace(d, request=replace(d.request, mimes=frozenset({"video/mp4"})))
    every = replace(d, request=replace(d.request, mimes=frozenset(t.lower() for t in types)))
    full = _media_types(r._ad_full(d, ad, ver, None))
    assert set(full) == types
    for _ in range(2):  # the second pass reads the cache
        for dec, want in ((d, full), (mp4, ["video/mp4"] * full.count("video/mp4")), (every, full)):
            assert _media_types(r._ad_fast(dec, ad, ver)) == want
            assert r._ad_fast(dec, ad, ver) == r._ad_full(dec, ad, ver, None)
    # one entry for "all types" (no mimes, or every type listed), one for mp4 only
    keys = {k[3][0] for k in r._fragments if k[0] == id(ad.candidate) and k[1] == "4.2"}
    assert keys == {None, frozenset({"video/mp4"})}


def _insecure_copy(ad: PlacedAd) -> PlacedAd:
    """``ad`` with its creative given an http rendition beside its https ones, an http
    mezzanine and an http caption file beside an https one."""
    cr = ad.candidate.creative
    first = cr.renditions[0]
    http = replace(first, url=first.url.replace("https://", "http://") + "?plain")
    cr = replace(
        cr,
        renditions=(http, *cr.renditions),
        mezzanine=Mezzanine("http://cdn.example/m.mov", "video/quicktime", 1920, 1080),
        captions=(
            Caption("http://cdn.example/cc.vtt", "text/vtt", "en"),
            Caption("https://cdn.example/cc.ttml", "application/ttml+xml", "es"),
        ),
    )
    c = ad.candidate
    return replace(ad, candidate=Candidate(c.line_item, cr, c.campaign, c.advertiser))


def _media_urls(xml: str) -> list[str]:
    root = etree.fromstring(xml.encode())
    return [
        (e.text or "").strip()
        for e in root.iter("{*}MediaFile", "{*}Mezzanine", "{*}ClosedCaptionFile")
    ]


@pytest.mark.parametrize("version", VERSIONS)
async def test_https_required_leaves_http_media_out_without_poisoning_the_cache(
    catalog: Path, version: str
) -> None:
    """When the request requires https media (the default; OpenRTB ``imp.secure``), no
    http MediaFile, Mezzanine or ClosedCaptionFile goes out, from the cached fragment as from
    the full render; a request that does not require it gets every one, before and after
    (the fragment cache keys on it)."""
    rt = _runtime(catalog)
    r: Renderer = rt.renderer
    ver = VersionVM.of(version)
    d = next(
        d
        for d in await _decisions(rt, version, 20)
        if d.ads and not d.ads[0].candidate.creative.vast_tag_url
    )
    ad = _insecure_copy(d.ads[0])
    secure = replace(d, request=replace(d.request, require_https=True))
    plain = replace(d, request=replace(d.request, require_https=False))
    for _ in range(2):  # the second pass reads the cache
        kept = _media_urls(r._ad_fast(secure, ad, ver))
        assert kept and all(u.startswith("https://") for u in kept), kept
        assert r._ad_fast(secure, ad, ver) == r._ad_full(secure, ad, ver, None)
        every = _media_urls(r._ad_fast(plain, ad, ver))
        assert any(u.startswith("http://") for u in every), every
        assert r._ad_fast(plain, ad, ver) == r._ad_full(plain, ad, ver, None)
    assert len(every) > len(kept)


async def test_debug_render_carries_the_explanation_once(catalog: Path) -> None:
    rt = _runtime(catalog)
    d = next(d for d in await _decisions(rt, "4.2", 10) if len(d.ads) >= 2)
    xml = rt.renderer.vast(d, debug={"note": "why"})
    assert xml.count("vastserver-debug") == 1
    plain = rt.renderer.vast(d)
    assert "vastserver-debug" not in plain
    # without the extension, the debug rendering is the cached one
    root = etree.fromstring(xml.encode())
    for ext in root.iter("{*}Extensions"):
        ext.getparent().remove(ext)
    assert etree.tostring(root) == etree.tostring(etree.fromstring(plain.encode()))


def _expires(xml: str) -> list[str | None]:
    return [e.text for e in etree.fromstring(xml.encode()).iter("{*}Expires")]


def _each_inline(r: Renderer, d: Decision) -> list[str | None]:
    """``d``'s ``<Expires>`` once per ``InLine`` ad (a wrapper has none)."""
    return [str(r.expires_for(d)) for a in d.ads if not a.candidate.creative.vast_tag_url]


@pytest.mark.parametrize("debug", [False, True])
async def test_inline_vmap_pods_carry_no_expires_while_vast_keeps_it(
    catalog: Path, debug: bool
) -> None:
    """An inline VMAP's pod plays at its break's offset, hours after the VMAP was served:
    the 5-minute ``<Expires>`` of a ``/vast`` answer would make a player drop it. So its
    ads carry none (full render and cached fragment alike), and the cache keeps the two
    apart: ``/vast`` still says ``<Expires>`` for the very same ads, whichever came first."""
    rt = _runtime(catalog)
    r: Renderer = rt.renderer
    ds = [d for d in await _decisions(rt, "4.2", 12) if d.ads][:2]
    rules = rt.service.snapshot.catalog.rules_for(None)
    breaks = plan_breaks(rules, (3 * 3600.0,), preroll=True, postroll=False)
    assert len(breaks) == len(ds) == 2
    assert _expires(r.vast(ds[1])) == _each_inline(r, ds[1])  # its fragments cached first
    vmap = r.vmap_inline(breaks, ds, ["", ""], session="s", debug=debug)
    root = etree.fromstring(vmap.encode())
    assert len(list(root.iter("{*}InLine"))) == sum(len(_each_inline(r, d)) for d in ds) > 0
    assert list(root.iter("{*}Expires")) == []
    for d in ds:  # /vast after the VMAP: the inline fragments did not replace its own
        assert _expires(r.vast(d)) == _each_inline(r, d)
    ver = VersionVM.of("4.2")
    for d in ds:
        for a in d.ads:
            assert r._ad_fast(d, a, ver, False) == r._ad_full(d, a, ver, None, False)
            assert "<Expires>" not in r._ad_fast(d, a, ver, False)


def test_fragment_cache_is_bounded(catalog: Path) -> None:
    rt = _runtime(catalog)
    r = Renderer(
        Path(__file__).resolve().parent.parent / "templates",
        urls=rt.renderer.urls,
        keyring=rt.renderer.keyring,
        fragment_cache_size=3,
    )
    cands = rt.service.snapshot.index.candidates[:10]
    ver = VersionVM.of("4.2")
    for c in cands:
        r._fragment(c, ver, True, (None, False))
    assert len(r._fragments) == 3


async def test_category_is_the_advertisers_plus_the_creatives(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A creative's categories add to its advertiser's (docs/catalog.md): <Category> carries
    both, each once, and brand safety screens the same set (``bcat`` of the creative's own
    category keeps the ad out)."""
    doc = json.loads(DEMO_CATALOG.read_text())
    cr = next(cr for cr in doc["creatives"] if cr["id"] == "cr-streamly-originals-30")
    cr["categories"] = ["IAB3", "IAB1-7"]  # IAB1-7 is the advertiser's too
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    client: Any = await make_client(catalog=str(path))

    async def streamly_ads(query: str) -> list[list[str]]:
        resp = await client.get("/vast?pod_duration=120&max_ads=4&device_type=ctv" + query)
        assert resp.status == 200
        root = etree.fromstring(await resp.read())
        ads = root.findall("{*}Ad")
        assert ads
        return [
            [str(e.text) for e in ad.iter("{*}Category")]
            for ad in ads
            if "cr-streamly-originals-30" in str(ad.get("id"))
        ]

    assert await streamly_ads("") == [["IAB1-7", "IAB3"]]
    assert await streamly_ads("&bcat=IAB3") == []


def test_pricing_states_the_cpm_to_the_micro() -> None:
    """``<Pricing>`` was rounded to cents: 33.333 said 33.33 and 0.0004 said 0.00. It is
    written from the micros the token carries, so the two never differ."""
    from vastserver.render import cpm_text

    assert [cpm_text(m) for m in (20_000_000, 1_500_000, 33_333_000, 400, 12_345_678, 0)] == [
        "20.00",
        "1.50",
        "33.333",
        "0.0004",
        "12.345678",
        "0.00",
    ]


async def test_pricing_follows_what_each_placed_ad_costs(catalog: Path) -> None:
    """One line item may cost something in one slot and nothing in another (a slot price,
    or a price of 0 beside one): <Pricing> is there exactly when the impression costs
    anything, on the cached path as on the full one, and says what the token carries."""
    from dataclasses import replace

    from vastserver.tracking import verify

    rt = _runtime(catalog)
    r: Renderer = rt.renderer
    ver = VersionVM.of("4.2")
    d = next(d for d in await _decisions(rt, "4.2", 10) if d.ads)
    ad = d.ads[0]
    for price, text in ((0.0, None), (438.7264885, "438.726488"), (2.5, "2.50")):
        placed = replace(ad, price_cpm=price)
        doc = replace(d, ads=(placed,))
        assert r._ad_fast(doc, placed, ver) == r._ad_full(doc, placed, ver, None)
        root = etree.fromstring(r.vast(doc).encode())
        assert [e.text for e in root.iter("{*}Pricing")] == ([] if text is None else [text])
        imp = next(e.text for e in root.iter("{*}Impression") if "/t/impression" in str(e.text))
        token = parse_qs(urlsplit(str(imp).strip()).query)["tk"][0]
        micros = verify(token, rt.keyring, now=2_000_000_000, max_age_s=10**9, event="impression")
        assert micros.price_micros == round(price * 1_000_000)


def _served_4_2(doc: dict[str, Any], tmp_path: Path) -> tuple[Any, Renderer, VersionVM, AdRules]:
    """A runtime on catalog ``doc``, its renderer, VAST 4.2 and the default ad rules."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    rt = _runtime(path)
    return rt, rt.renderer, VersionVM.of("4.2"), rt.service.snapshot.catalog.rules_for(None)


async def test_privacy_macros_fill_in_the_cached_fragment_per_request(
    tmp_path: Path,
) -> None:
    """The cached fragment of an ad whose trackers or tag URL carry privacy macros has a slot
    for each value: two requests get their own values, both as the template would write
    them."""
    doc = generate_catalog(60, 5, now=FIXED_NOW)
    for n, cr in enumerate(doc["creatives"]):
        if n % 2 == 0:
            cr["trackers"] = {
                "impression": ["https://px.example/i?g=${GDPR}&c=${GDPR_CONSENT_755}&a=1"],
                "start": ["https://px.example/s?u=${US_PRIVACY}&s=${GPP_SID}&t=[TIMESTAMP]"],
            }
        elif n % 4 == 1:  # a tag passing the signals on (its trackers have no macros)
            for key in ("renditions", "mezzanine", "click_through", "skip_offset", "captions"):
                cr.pop(key, None)
            cr.pop("trackers", None)
            cr["vast_tag_url"] = f"https://tp.example/v?n={n}&g=${{GDPR}}&c=${{GDPR_CONSENT_1}}"
    rt, r, ver, rules = _served_4_2(doc, tmp_path)
    got: dict[str, list[str]] = {}
    for consent in ("CPaaaaaa.one", "CPbbbbbb.two"):
        q = {
            "pod_duration": "120",
            "max_ads": "4",
            "country": "US",
            "gdpr": "1",
            "gdpr_consent": consent,
            "us_privacy": "1YNN",
            "gpp_sid": "7",
        }
        d = await rt.service.decide(parse_vast_request(q, client_info({}, "127.0.0.1"), rules))
        assert any(a.candidate.creative.privacy_macros for a in d.ads)
        assert any(not a.candidate.creative.privacy_macros for a in d.ads)
        for a in d.ads:
            fast = r._ad_fast(d, a, ver)
            assert fast == r._ad_full(d, a, ver, None)
            if a.candidate.creative.vast_tag_url:
                assert f"&g=1&c={consent}]]></VASTAdTagURI>" in fast
                got.setdefault(f"tag {consent}", []).append(fast)
            elif a.candidate.creative.privacy_macros:
                assert f"https://px.example/i?g=1&amp;c={consent}&amp;a=1" not in fast  # CDATA
                assert f"https://px.example/i?g=1&c={consent}&a=1" in fast
                assert "https://px.example/s?u=1YNN&s=7&t=[TIMESTAMP]" in fast
                got.setdefault(consent, []).append(fast)
    assert len(got) == 4


async def test_privacy_macros_of_icon_trackers_fill_in_per_request(tmp_path: Path) -> None:
    """An icon's view and click trackers may carry privacy macros, like the creative's: the
    cached fragment gets each request's values, as the template would write them."""
    doc = generate_catalog(60, 5, now=FIXED_NOW)
    icon = next(cr["icons"][0] for cr in doc["creatives"] if cr.get("icons"))
    for n, cr in enumerate(doc["creatives"]):
        cr.pop("trackers", None)
        cr["icons"] = []
        if n % 2 == 0:
            view = f"https://px.example/iv?n={n}&g=${{GDPR}}&a=1"
            click = "https://px.example/ic?c=${GDPR_CONSENT_755}"
            cr["icons"] = [{**icon, "view_tracking_urls": [view], "click_tracking_urls": [click]}]
    rt, r, ver, rules = _served_4_2(doc, tmp_path)
    seen = []
    for consent in ("CPaaaaaa.one", "CPbbbbbb.two"):
        q = {"pod_duration": "120", "max_ads": "4", "gdpr": "1", "gdpr_consent": consent}
        d = await rt.service.decide(parse_vast_request(q, client_info({}, "127.0.0.1"), rules))
        for a in d.ads:
            fast = r._ad_fast(d, a, ver)
            assert fast == r._ad_full(d, a, ver, None)
            if a.candidate.creative.icons:
                assert a.candidate.creative.privacy_macros
                assert "&g=1&a=1]]></IconViewTracking>" in fast
                assert f"<IconClickTracking><![CDATA[https://px.example/ic?c={consent}]]>" in fast
                seen.append(consent)
            else:
                assert not a.candidate.creative.privacy_macros
    assert sorted(set(seen)) == ["CPaaaaaa.one", "CPbbbbbb.two"]
