"""Everything we emit, judged by things we did not write: the IAB XSDs, vastlint, and the
dailymotion player libraries under node. Documents are fetched over real HTTP."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.conftest import DEMO_CATALOG, FIXED_NOW, PUBLIC_URL, ROOT, ClientFactory
from tests.support import conformance as c
from vastserver.app import RUNTIME
from vastserver.catalog.gen import generate_catalog
from vastserver.catalog.load import IAB_MACROS

VERSIONS = ("2.0", "3.0", "4.0", "4.1", "4.2", "4.3")


@pytest.fixture(scope="module")
def big_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough advertisers and categories for 8-ad pods with competitive separation."""
    path = tmp_path_factory.mktemp("catalog") / "catalog.json"
    path.write_text(json.dumps(generate_catalog(400, seed=7, now=FIXED_NOW)))
    return path


def _ads_in(xml: bytes) -> list[etree._Element]:
    root = etree.fromstring(xml)
    return [e for e in root if isinstance(e.tag, str) and etree.QName(e).localname == "Ad"]


async def _fetch(client: Any, query: str) -> bytes:
    resp = await client.get("/vast?" + query)
    assert resp.status == 200, (query, await resp.text())
    return bytes(await resp.read())


def _check_static(xml: bytes, version: str, label: str) -> None:
    errors = c.validate_vast_xsd(xml, version)
    assert errors == [], f"{label}: XSD\n" + "\n".join(errors)
    lint_errors, lint_warnings = c.vastlint_report(xml)
    assert lint_errors == [], f"{label}: vastlint errors\n" + "\n".join(lint_errors)
    assert lint_warnings == [], f"{label}: vastlint warnings\n" + "\n".join(lint_warnings)


def test_the_readme_says_where_the_conformance_material_is_read() -> None:
    """The XSDs and samples are not shipped: the set-up notes must say where these tests
    look for them and that they skip (listed by -ra) without them."""
    setup = (ROOT / "README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    assert c.SPEC_ENV_VAR in setup and "../shared/spec" in setup
    assert c.PROJECT_ROOT.parent / "shared" / "spec" == c._DEFAULT_SPEC
    assert "skip" in setup and "-ra" in setup


@pytest.mark.parametrize("version", VERSIONS)
async def test_pods_of_1_to_8_ads(
    make_client: ClientFactory, big_catalog: Path, version: str
) -> None:
    c.require_spec()
    client = await make_client(catalog=str(big_catalog))
    docs: list[tuple[str, bytes, int]] = []
    for n in range(1, 9):
        query = (
            f"vast={version}&pod_duration={30 * n}&max_ads={n}&required_durations=30"
            f"&device_id=viewer-{version}-{n}"
        )
        xml = await _fetch(client, query)
        ads = _ads_in(xml)
        want = 1 if version == "2.0" else n  # VAST 2.0 has no pods: its player plays one
        assert len(ads) == want, f"{query}: wanted a full pod of {want}, got {len(ads)}"
        _check_static(xml, version, query)
        docs.append((query, xml, want))
    if not c.node_available():
        return
    parsed = c.node_parse_many([d[1].decode() for d in docs], "vast")
    allowed = c.UNAVOIDABLE_CLIENT_WARNINGS[version]
    for (query, _, n), result in zip(docs, parsed, strict=True):
        assert result["ok"], (query, result["error"])
        assert len(result["ads"]) == n, query
        bad = [w for w in result["warnings"] if not w.startswith(allowed)]
        assert bad == [], (query, bad)
        if version != "2.0":
            assert [int(a["sequence"]) for a in result["ads"]] == list(range(1, n + 1))
        for ad in result["ads"]:
            creative = ad["creatives"][0]
            assert creative["duration"] == 30
            assert creative["mediaFiles"] >= 1


@pytest.mark.parametrize("version", VERSIONS)
async def test_demo_catalog_variants(client: Any, version: str) -> None:
    """Plain, debug, no-fill and targeting-rich requests against the demo catalog."""
    c.require_spec()
    queries = [
        f"vast={version}",
        f"vast={version}&pod_duration=120&max_ads=4&debug=1",
        f"vast={version}&pod_duration=2",
        f"vast={version}&pod_duration=2&debug=1",
        f"vast={version}&break=pre&device_type=ctv&platform=roku&rating=TV-14&genre=drama",
        f"vast={version}&pod_duration=60&rqddurs=6,15,20&lmt=1",
        f"vast={version}&break=pre&series=galaxy-patrol&pod_duration=60&max_ads=2",
    ]
    docs = []
    for q in queries:
        xml = await _fetch(client, q)
        _check_static(xml, version, q)
        docs.append((q, xml))
    if not c.node_available():
        return
    parsed = c.node_parse_many([d[1].decode() for d in docs], "vast")
    allowed = c.UNAVOIDABLE_CLIENT_WARNINGS[version]
    for (q, xml), result in zip(docs, parsed, strict=True):
        assert result["ok"], (q, result["error"])
        assert len(result["ads"]) == len(_ads_in(xml)), q
        bad = [w for w in result["warnings"] if not w.startswith(allowed)]
        assert bad == [], (q, bad)


@pytest.mark.parametrize("version", VERSIONS)
async def test_flat_sponsorship_carries_no_price(client: Any, version: str) -> None:
    """The demo's flat-fee sponsorship owns the Galaxy Patrol pre-roll's first slot; a flat
    fee has no price per impression, so its ad has no <Pricing>, and neither has the house
    ad at 0 after it; a CPM ad has its own (VAST 3.0 on: 2.0 has no <Pricing>)."""
    xml = await _fetch(
        client, f"vast={version}&break=pre&series=galaxy-patrol&pod_duration=60&max_ads=2"
    )
    ads = _ads_in(xml)
    assert len(ads) == (1 if version == "2.0" else 2)  # 2.0 has no pods: one ad a break
    first, *rest = ads
    assert str(first.get("id")).startswith("li-streamly-galaxy-sponsor-")
    assert list(first.iter("{*}Pricing")) == []
    for second in rest:
        assert str(second.get("id")).startswith("li-house-promo-")
        assert list(second.iter("{*}Pricing")) == []
    paid = _ads_in(await _fetch(client, f"vast={version}&pod_duration=30&max_ads=1"))
    prices = [float(str(e.text)) for e in paid[0].iter("{*}Pricing")]
    if version == "2.0":
        assert prices == []
    else:
        assert len(prices) == 1 and prices[0] > 0


@pytest.mark.parametrize("version", ["2.0", "3.0"])
async def test_ctv_addendum_extensions_only_where_lint_clean(client: Any, version: str) -> None:
    """VAST 2.0 carries UniversalAdId and Mezzanine as IAB CTV-addendum InLine <Extension>s.
    3.0 does not: the addendum wants them in CreativeExtensions there, which the only 3.0 XSD
    (Google's draft) rejects, and in InLine/Extensions vastlint warns (ctv-extension-location,
    extension-misplaced-element, version-mismatch). 3.0 keeps the ad id in Creative@AdID."""
    xml = await _fetch(client, f"vast={version}&pod_duration=60")
    ads = _ads_in(xml)
    assert ads
    for ad in ads:
        types = [e.get("type") for e in ad.iter("Extension")]
        assert ("UniversalAdId" in types) == (version == "2.0"), types
        (creative,) = ad.iter("Creative")
        assert creative.get("AdID")


def _odd_creative(key: str, n: int, **fields: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A creative and a sponsorship line item that serves it alone for ``series=odd-<key>``."""
    demo = json.loads(DEMO_CATALOG.read_text())
    cr = {
        "id": f"cr-odd-{key}",
        "advertiser_id": "adv-odd",
        "title": f"odd {key}",
        "duration": 15,
        "universal_ad_id": f"ODDX{n:04d}000H",
        **fields,
    }
    if "vast_tag_url" not in fields and "renditions" not in fields:
        cr["renditions"] = demo["creatives"][0]["renditions"]
    li = {
        "id": f"li-odd-{key}",
        "campaign_id": "cmp-odd",
        "name": f"odd {key}",
        "tier": "sponsorship",
        "creative_ids": [cr["id"]],
        "price": 10,
        "targeting": {"series": {"include": [f"odd-{key}"]}},
    }
    return cr, li


def _icon(program: str, **more: Any) -> dict[str, Any]:
    return {
        "program": program,
        "width": 20,
        "height": 20,
        "x_position": "right",
        "y_position": "top",
        "image_url": f"https://icons.example/{program}.png",
        "creative_type": "image/png",
        **more,
    }


ICON_VIEW = "https://px.example/icon-view?gdpr=${GDPR}&cb=[CACHEBUSTING]"
ICON_CLICK = "https://px.example/icon-click?ts=[TIMESTAMP]"
FALLBACK = {
    "image_url": "https://icons.example/why-this-ad.png",
    "width": 400,
    "height": 300,
    "alt_text": "Why this ad? <see> & scan",
}
ADCHOICES_ICON = _icon(
    "AdChoices",
    click_through="https://optout.example/",
    click_fallback_images=[FALLBACK, {**FALLBACK, "alt_text": None, "width": 200}],
    view_tracking_urls=[ICON_VIEW],
    click_tracking_urls=[ICON_CLICK, ICON_CLICK + "&n=2"],
)


MACROS = sorted(IAB_MACROS)
ADVERTISER_AD_ID = "acme <spot> & 7"
OMID_PARAMS = '{"campaign": "cmp-odd", "creative": "<cr-odd>"}'
NOT_EXECUTED = "https://verify.example.com/ne?r=[REASON]&cb=[CACHEBUSTING]"
OMID_VERIFICATION = {
    "vendor": "verify.example.com-omid",
    "js_url": "https://verify.example.com/omid.js",
    "parameters": OMID_PARAMS,
}
MORE_UAIDS = [
    {"registry": "clearcast.co.uk", "value": "ODD/CLRC001/015"},
    {"registry": "registry.example", "value": "x<&>1"},
]
SIMID_URL = "https://simid.example/shop.html?c=odd&cb=[CACHEBUSTING]"
SIMID_GAME = "https://simid.example/game.html?c=odd"
SIMID_FILES = [
    {"url": SIMID_URL, "api_framework": "SIMID"},
    {"url": SIMID_GAME, "api_framework": "SIMID", "type": "text/html", "variable_duration": True},
]
SIMID_STARTED = [
    "https://px.example/simid-start?c=odd&cb=[CACHEBUSTING]",
    "https://dv.example/interactive?ad=odd",
]
"""The advertiser's own ``interactiveStart`` pixels of the SIMID creative."""
ODD_CREATIVES: dict[str, dict[str, Any]] = {
    # the AdChoices icon second, so that keeping "the first" would be wrong
    "icons": {
        "click_through": "https://odd.example/",
        "icons": [_icon("Logo"), ADCHOICES_ICON],
    },
    "wrapper-icons": {
        "vast_tag_url": "https://tag.example/vast?id=1",
        "icons": [_icon("Logo"), ADCHOICES_ICON],
    },
    "no-click": {},
    # every IAB macro the catalog takes, in a third-party tracker: vastlint knows them all
    "every-macro": {
        "click_through": "https://odd.example/",
        "trackers": {
            event: ["https://px.example/m?" + "&".join(f"m{i}=[{m}]" for i, m in enumerate(MACROS))]
            for event in ("impression", "start", "click")
        },
    },
    "click-trackers-only": {"trackers": {"click": ["https://px.example/click"]}},
    "verification": {
        "click_through": "https://odd.example/",
        "verifications": [
            {
                **OMID_VERIFICATION,
                "browser_optional": True,
                "not_executed_urls": [NOT_EXECUTED],
            }
        ],
    },
    "wrapper-verification": {
        "vast_tag_url": "https://tag.example/vast?id=3",
        "verifications": [OMID_VERIFICATION],
    },
    # the advertiser's own id (text to escape), inline and in a wrapper
    "ad-id": {"click_through": "https://odd.example/", "ad_id": ADVERTISER_AD_ID},
    "wrapper-ad-id": {"vast_tag_url": "https://tag.example/vast?id=2", "ad_id": ADVERTISER_AD_ID},
    # a VPAID unit (served off CTV): its script is marked apiFramework (before VAST 4.1)
    "vpaid": {
        "click_through": "https://odd.example/",
        "api_framework": "VPAID",
        "renditions": [
            {
                "url": "https://cdn.example.com/odd/vpaid.js",
                "mime": "application/javascript",
                "width": 640,
                "height": 360,
            },
            {
                "url": "https://cdn.example.com/odd/vpaid.mp4",
                "mime": "video/mp4",
                "width": 640,
                "height": 360,
            },
        ],
    },
    # text that starts like a URI (vastlint wants it in CDATA): in every text element
    "uri-like-text": {
        "click_through": "https://odd.example/",
        "title": "Acme: Spring & Sale",
        "ad_id": "acme:42",
        "universal_ad_id_registry": "clearcast",
        "universal_ad_id": "isci:ABC123",
        "universal_ad_ids": [{"registry": "other", "value": "urn:x:1"}],
    },
    # other registries' ids beside the Ad-ID (text to escape in one)
    "universal-ad-ids": {"click_through": "https://odd.example/", "universal_ad_ids": MORE_UAIDS},
    # an interactive (SIMID) layer over the video, a second one that may extend the ad
    # (a mezzanine too: the files come after it)
    "simid": {
        "click_through": "https://odd.example/",
        "interactive": SIMID_FILES,
        "trackers": {"interactiveStart": SIMID_STARTED, "start": ["https://px.example/s"]},
        "mezzanine": {
            "url": "https://cdn.example.com/odd/simid-mezz.mov",
            "mime": "video/quicktime",
            "width": 1920,
            "height": 1080,
        },
    },
}


def _with_odd_advertiser() -> dict[str, Any]:
    """The demo catalog with the advertiser and campaign of :func:`_odd_creative`'s."""
    doc: dict[str, Any] = json.loads(DEMO_CATALOG.read_text())
    doc["advertisers"].append(
        {"id": "adv-odd", "name": "Odd", "domain": "odd.example", "categories": ["IAB3"]}
    )
    doc["campaigns"].append(
        {
            "id": "cmp-odd",
            "advertiser_id": "adv-odd",
            "name": "Odd",
            "start": "2026-01-01T00:00:00Z",
            "end": "2099-12-31T23:59:59Z",
        }
    )
    return doc


@pytest.fixture(scope="module")
def odd_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo catalog plus creatives that exercise what versions disagree on."""
    doc = _with_odd_advertiser()
    for n, (key, fields) in enumerate(ODD_CREATIVES.items()):
        cr, li = _odd_creative(key, n, **fields)
        doc["creatives"].append(cr)
        doc["line_items"].append(li)
    path = tmp_path_factory.mktemp("odd") / "catalog.json"
    path.write_text(json.dumps(doc))
    return path


def _local(e: etree._Element) -> str:
    return str(etree.QName(e).localname)


def _children(e: etree._Element) -> list[str]:
    return [_local(x) for x in e if isinstance(x.tag, str)]


def _text(e: etree._Element) -> str:
    return (e.text or "").strip()


def _icon_programs(xml: bytes) -> list[str]:
    return [str(e.get("program")) for e in etree.fromstring(xml).iter("{*}Icon")]


@pytest.mark.parametrize("version", VERSIONS)
async def test_odd_creatives(make_client: ClientFactory, odd_catalog: Path, version: str) -> None:
    """Icons, clicks: each version gets what its schema allows, valid, lint-clean and read by
    the player library without a warning."""
    c.require_spec()
    client: Any = await make_client(catalog=str(odd_catalog))
    docs: dict[str, bytes] = {}
    for key in ODD_CREATIVES:
        query = f"vast={version}&series=odd-{key}&pod_duration=15&max_ads=1"
        xml = await _fetch(client, query)
        (ad,) = _ads_in(xml)
        assert str(ad.get("id")) == f"li-odd-{key}-cr-odd-{key}"
        _check_static(xml, version, query)
        docs[key] = xml
    # 2.0 has no icons; the 4.0 and 4.1 XSDs allow one (AdChoices first); 3.0 and 4.2+ any
    want = {"2.0": [], "4.0": ["AdChoices"], "4.1": ["AdChoices"]}.get(
        version, ["Logo", "AdChoices"]
    )
    files = {
        str(m.get("type")): m.get("apiFramework")
        for m in etree.fromstring(docs["vpaid"]).iter("{*}MediaFile")
    }
    # VAST 4.1 deprecated VPAID (vastlint warns on it): from then on its video alone
    script = {} if version in ("4.1", "4.2", "4.3") else {"application/javascript": "VPAID"}
    assert files == {**script, "video/mp4": None}
    odd = etree.fromstring(docs["uri-like-text"])
    assert [_text(e) for e in odd.iter("{*}AdTitle")] == ["Acme: Spring & Sale"]
    assert [_text(e) for e in odd.iter("{*}AdvertiserAdId")] == ["acme:42"]
    uaids = [_text(e) for e in odd.iter("{*}UniversalAdId")]
    assert uaids[:1] == ([] if version == "3.0" else ["isci:ABC123"])
    assert set(uaids) <= {"isci:ABC123", "urn:x:1"}
    assert _icon_programs(docs["icons"]) == want
    assert _icon_programs(docs["wrapper-icons"]) == want
    # the AdChoices icon's clicks, fallback images (4.2+) and trackers, in schema order
    for key in ("icons", "wrapper-icons") if want else ():
        (icon,) = (
            e
            for e in etree.fromstring(docs[key]).iter("{*}Icon")
            if e.get("program") == "AdChoices"
        )
        assert _children(icon) == ["StaticResource", "IconClicks", "IconViewTracking"], key
        assert [_text(e) for e in icon.iter("{*}IconViewTracking")] == [
            ICON_VIEW.replace("${GDPR}", "")  # no privacy signal in the request
        ]
        (clicks,) = icon.iter("{*}IconClicks")
        tracking = ["IconClickTracking"] * 2
        if version == "3.0":
            assert _children(clicks) == [*tracking, "IconClickThrough"], key
        elif version in ("4.0", "4.1"):
            assert _children(clicks) == ["IconClickThrough", *tracking], key
        else:
            assert _children(clicks) == ["IconClickFallbackImages", "IconClickThrough", *tracking]
            images = [
                (e.get("width"), e.get("height"), [(_local(x), _text(x)) for x in e])
                for e in clicks.iter("{*}IconClickFallbackImage")
            ]
            url = ("StaticResource", FALLBACK["image_url"])
            assert images == [
                ("400", "300", [("AltText", FALLBACK["alt_text"]), url]),
                ("200", "300", [url]),
            ]
        assert [_text(e) for e in clicks.iter("{*}IconClickTracking")] == [
            ICON_CLICK,
            ICON_CLICK + "&n=2",
        ]
    # no click-through and no click tracker: no <VideoClicks> at all (players warn on an
    # empty one); a click tracker alone still goes out
    assert list(etree.fromstring(docs["no-click"]).iter("{*}VideoClicks")) == []
    (clicks,) = etree.fromstring(docs["click-trackers-only"]).iter("{*}VideoClicks")
    assert [etree.QName(e).localname for e in clicks] == ["ClickTracking"]
    # OMID verification, with its parameters, in every version: an element from 4.1, an
    # <Extension type="AdVerifications"> before (in wrappers too)
    for key in ("verification", "wrapper-verification"):
        root = etree.fromstring(docs[key])
        params = root.iter("{*}VerificationParameters")
        assert [e.text for e in params] == [OMID_PARAMS], key
        (verifications,) = root.iter("{*}AdVerifications")
        parent = verifications.getparent()
        assert parent is not None
        if version in ("4.1", "4.2", "4.3"):
            assert etree.QName(parent).localname in ("InLine", "Wrapper"), key
        else:
            assert parent.get("type") == "AdVerifications", key
        # browserOptional as the catalog says (false by default); verificationNotExecuted
        # tracking only where the catalog has it
        (script,) = verifications.iter("{*}JavaScriptResource")
        tracking = [
            (t.get("event"), (t.text or "").strip()) for t in verifications.iter("{*}Tracking")
        ]
        if key == "verification":
            assert script.get("browserOptional") == "true"
            assert tracking == [("verificationNotExecuted", NOT_EXECUTED)]
        else:
            assert script.get("browserOptional") == "false"
            assert tracking == []
    # Creative@adId (AdID before 4.0) is the Ad-ID, the universal ad id; the advertiser's
    # own ad_id goes in an extension, and only where the catalog has one
    for n, key in enumerate(ODD_CREATIVES):
        if key == "uri-like-text":  # its own ids (above)
            continue
        root = etree.fromstring(docs[key])
        (creative,) = root.iter("{*}Creative")
        assert creative.get("adId" if version.startswith("4") else "AdID") == f"ODDX{n:04d}000H"
        own = [e.text for e in root.iter("{*}AdvertiserAdId")]
        assert own == ([ADVERTISER_AD_ID] if key.endswith("ad-id") else []), key
    # every UniversalAdId where the version's XSD allows several (4.2+, and 2.0's CTV
    # extensions), the primary one first; else the primary one alone (none in 3.0)
    n = list(ODD_CREATIVES).index("universal-ad-ids")
    ids = [
        (e.get("idRegistry"), e.text)
        for e in etree.fromstring(docs["universal-ad-ids"]).iter("{*}UniversalAdId")
    ]
    every = [("ad-id.org", f"ODDX{n:04d}000H"), *((u["registry"], u["value"]) for u in MORE_UAIDS)]
    assert ids == {"3.0": [], "4.0": every[:1], "4.1": every[:1]}.get(version, every)
    if c.node_available():
        parsed = c.node_parse_many([x.decode() for x in docs.values()], "vast")
        allowed = c.UNAVOIDABLE_CLIENT_WARNINGS[version]
        for key, result in zip(docs, parsed, strict=True):
            assert result["ok"], (key, result["error"])
            fallback = key.endswith("icons") and version in ("4.2", "4.3")
            also = (FALLBACK_STATIC_RESOURCE,) if fallback else ()
            bad = [w for w in result["warnings"] if not w.startswith((*allowed, *also))]
            assert bad == [], (key, bad)
        # the player library reads every id (the primary one first) where they go out
        result = parsed[list(docs).index("universal-ad-ids")]
        (creative,) = result["ads"][0]["creatives"]
        read = [(u["idRegistry"], u["value"]) for u in creative["universalAdIds"]]
        assert read == (ids if version.startswith("4") else []), read


@pytest.mark.parametrize("version", VERSIONS)
async def test_simid_interactive_files(
    make_client: ClientFactory, odd_catalog: Path, version: str
) -> None:
    """A creative's SIMID files go out as ``<InteractiveCreativeFile>``s after its
    ``<MediaFile>``s from VAST 4.1 (the first version whose element has ``variableDuration``;
    4.0 and earlier send the video alone), with an ``interactiveStart`` beacon of ours from
    4.2 (the first schema with that event), the creative's own ``interactiveStart``
    trackers after it: valid, lint-clean, and read by the player library, whose creative
    holds the first file and the ``interactiveStart`` event."""
    c.require_spec()
    client: Any = await make_client(catalog=str(odd_catalog))
    xml = await _fetch(client, f"vast={version}&series=odd-simid&pod_duration=15&max_ads=1")
    (ad,) = _ads_in(xml)
    assert str(ad.get("id")) == "li-odd-simid-cr-odd-simid"
    _check_static(xml, version, f"simid {version}")
    root = etree.fromstring(xml)
    (media,) = root.iter("{*}MediaFiles")
    files = [
        (f.get("type"), f.get("apiFramework"), f.get("variableDuration"), _text(f))
        for f in media.iter("{*}InteractiveCreativeFile")
    ]
    interactive = version in ("4.1", "4.2", "4.3")
    if interactive:
        # variableDuration="false" is the attribute's absence (vastlint warns on the value)
        assert files == [
            ("text/html", "SIMID", None, SIMID_URL),
            ("text/html", "SIMID", "true", SIMID_GAME),
        ]
        names = _children(media)
        assert names[-2:] == ["InteractiveCreativeFile"] * 2, names
        assert names.index("MediaFile") < names.index("Mezzanine") < len(names) - 2, names
    else:
        assert files == []
    starts = [_text(t) for t in root.iter("{*}Tracking") if t.get("event") == "interactiveStart"]
    # ours, then the advertiser's (none where the version has no such event)
    assert starts[1:] == (SIMID_STARTED if version in ("4.2", "4.3") else []), starts
    assert len(starts) == (3 if version in ("4.2", "4.3") else 0), starts
    for url in starts[:1]:  # our beacon: the player fires it when the SIMID creative starts
        beacon = await client.get(url.removeprefix(PUBLIC_URL))
        assert beacon.status == 204, url
    if not c.node_available():
        return
    (parsed,) = c.node_parse_many([xml.decode()], "vast")
    assert parsed["ok"], parsed["error"]
    allowed = c.UNAVOIDABLE_CLIENT_WARNINGS[version]
    assert [w for w in parsed["warnings"] if not w.startswith(allowed)] == []
    (creative,) = parsed["ads"][0]["creatives"]
    assert creative["mediaFiles"] >= 1
    read = creative["interactiveCreativeFile"]
    if interactive:
        assert read == {
            "fileURL": SIMID_URL,
            "type": "text/html",
            "apiFramework": "SIMID",
            "variableDuration": False,
        }
    else:
        assert read is None
    assert ("interactiveStart" in creative["trackingEvents"]) == (version in ("4.2", "4.3"))


FALLBACK_STATIC_RESOURCE = "Element 'StaticResource' missing required attribute(s) 'creativeType'"
"""vast-client 6.4.5 asks every ``StaticResource`` for ``creativeType``; the one inside an
``IconClickFallbackImage`` (4.2+) is a bare ``anyURI`` in the XSD, which refuses the
attribute there."""


@pytest.mark.parametrize("version", ["4.0", "4.1", "4.2"])
async def test_inline_vmap_with_odd_creatives(
    make_client: ClientFactory, odd_catalog: Path, version: str
) -> None:
    """The pods of an inline VMAP are the /vast ones: valid for their version too."""
    c.require_spec()
    client: Any = await make_client(catalog=str(odd_catalog))
    resp = await client.get(
        f"/vmap?content_duration=1800&cue_points=600&inline=1&vast={version}&series=odd-icons"
    )
    assert resp.status == 200
    xml = bytes(await resp.read())
    assert _icon_programs(xml), "the odd-icons sponsorship should be in the breaks"
    assert errors_of(xml) == []


@pytest.mark.parametrize(
    "query",
    [
        "content_duration=1800&cue_points=600,1200",
        "content_duration=1800&cue_points=600&vast=2.0",
        "content_duration=3600&midroll_interval=900&preroll_duration=15",
        "content_duration=1200&cue_points=25%,75%&postroll=0",
        "preroll=0&postroll=0",
        "content_duration=1800&cue_points=600&inline=1",
        "content_duration=1800&cue_points=600&inline=1&vast=3.0",
        "content_duration=1800&cue_points=600&inline=1&vast=4.3&debug=1",
        "content_duration=1800&cue_points=600,1200&inline=1&midroll_duration=1",
    ],
)
async def test_vmap(client: Any, query: str) -> None:
    c.require_spec()
    resp = await client.get("/vmap?" + query)
    assert resp.status == 200
    xml = bytes(await resp.read())
    errors = c.validate_vmap_xsd(xml)
    assert errors == [], "\n".join(errors)
    lint_errors, lint_warnings = c.vastlint_report(xml)
    assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings
    if not c.node_available():
        return
    parsed = c.node_parse_vmap(xml)
    assert parsed["ok"], parsed["error"]
    root = etree.fromstring(xml)
    assert len(parsed["adBreaks"]) == len(root.findall(f"{{{c.VMAP_NS}}}AdBreak"))
    for vast in parsed["vast"]:
        assert vast["ok"], vast["error"]


async def test_inline_vmap_with_breaks_left_as_tags_at_the_deadline(
    make_client: ClientFactory,
) -> None:
    """Breaks not decided by the deadline go out as ad tags beside the inline pods: the
    mixed document is valid VMAP, and the player library reads both kinds of break."""
    c.require_spec()
    # A generous deadline, so that a loaded machine still makes the first two decisions in
    # time; the second then ends past it (a busy server), wherever the loop's clock stands:
    # no race between fixed sleeps and the deadline.
    client: Any = await make_client(deadline_ms=1500)
    service = client.server.app[RUNTIME].service
    decide = service.decide
    loop = asyncio.get_running_loop()
    calls = 0

    async def second_decision_overruns(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        out = await decide(*args, **kw)
        if calls == 2:
            assert loop.time() < kw["deadline"], "the first two decisions took 1.5 s"
            await asyncio.sleep(kw["deadline"] - loop.time() + 0.005)
        return out

    service.decide = second_decision_overruns
    resp = await client.get("/vmap?content_duration=3600&midroll_interval=600&inline=1")
    assert calls == 2  # the breaks after the deadline are not decided at all
    assert resp.status == 200
    xml = bytes(await resp.read())
    root = etree.fromstring(xml)
    sources = root.findall(f"{{{c.VMAP_NS}}}AdBreak/{{{c.VMAP_NS}}}AdSource")
    kinds = [etree.QName(s[0]).localname for s in sources]
    assert kinds == ["VASTAdData"] * 2 + ["AdTagURI"] * (len(sources) - 2), kinds
    assert len(sources) == 7  # pre, 5 mid-rolls, post
    assert errors_of(xml) == []
    if not c.node_available():
        return
    parsed = c.node_parse_vmap(xml)
    assert parsed["ok"], parsed["error"]
    assert len(parsed["adBreaks"]) == 7
    for vast in parsed["vast"]:
        assert vast["ok"], vast["error"]


def errors_of(xml: bytes) -> list[str]:
    lint_errors, lint_warnings = c.vastlint_report(xml)
    return c.validate_vmap_xsd(xml) + lint_errors + lint_warnings


@pytest.mark.parametrize("version", VERSIONS)
async def test_closed_captions(make_client: ClientFactory, tmp_path: Path, version: str) -> None:
    """Caption files go out from VAST 4.1 (the first version with ClosedCaptionFiles) and
    are left out before it; the document stays valid either way."""
    c.require_spec()
    doc = json.loads(DEMO_CATALOG.read_text())
    for cr in doc["creatives"]:
        cr["captions"] = [
            {"url": "https://cdn.example/cc/a.vtt?x=1&y=2", "mime": "text/vtt", "language": "en"},
            {
                "url": "https://cdn.example/cc/a.ttml",
                "mime": "application/ttml+xml",
                "language": "es",
            },
        ]
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    client: Any = await make_client(catalog=str(path))
    xml = await _fetch(client, f"vast={version}&pod_duration=120&max_ads=4")
    root = etree.fromstring(xml)
    files = root.findall(".//{*}ClosedCaptionFile")
    if version in ("4.1", "4.2", "4.3"):
        assert len(files) == 2 * len(_ads_in(xml)) > 0
        assert [(f.get("type"), f.get("language")) for f in files[:2]] == [
            ("text/vtt", "en"),
            ("application/ttml+xml", "es"),
        ]
        assert (files[0].text or "").strip() == "https://cdn.example/cc/a.vtt?x=1&y=2"
    else:
        assert files == []
    _check_static(xml, version, f"captions {version}")
    if c.node_available():
        (result,) = c.node_parse_many([xml.decode()], "vast")
        assert result["ok"], result["error"]


MIXED_MEDIA: dict[str, Any] = {
    "click_through": "https://odd.example/",
    "renditions": [
        {
            "url": "http://cdn.example/m/1080.mp4",
            "mime": "video/mp4",
            "width": 1920,
            "height": 1080,
        },
        {"url": "https://cdn.example/m/360.mp4", "mime": "video/mp4", "width": 640, "height": 360},
    ],
    "mezzanine": {
        "url": "http://cdn.example/m/mezz.mov",
        "mime": "video/quicktime",
        "width": 1920,
        "height": 1080,
    },
    "captions": [
        {"url": "http://cdn.example/m/en.vtt", "mime": "text/vtt", "language": "en"},
        {"url": "https://cdn.example/m/es.vtt", "mime": "text/vtt", "language": "es"},
    ],
}


def _media_urls(xml: bytes) -> list[str]:
    root = etree.fromstring(xml)
    return [
        (e.text or "").strip()
        for e in root.iter("{*}MediaFile", "{*}Mezzanine", "{*}ClosedCaptionFile")
    ]


@pytest.mark.parametrize("version", VERSIONS)
async def test_http_media_only_where_https_is_not_required(
    make_client: ClientFactory, tmp_path: Path, version: str
) -> None:
    """A creative with http and https media: where https is required
    (``VASTSERVER_REQUIRE_HTTPS_MEDIA=1``, the default, or OpenRTB ``imp.secure`` = 1) its
    http MediaFile, Mezzanine and ClosedCaptionFile are left out, and the document is
    valid and lint-clean; without that requirement they go out (vastlint warns
    ``VAST-2.0-mediafile-https`` on an http MediaFile, as the README says)."""
    c.require_spec()
    doc = _with_odd_advertiser()
    cr, li = _odd_creative("mixed", 90, **MIXED_MEDIA)
    cr["renditions"] = MIXED_MEDIA["renditions"]
    doc["creatives"].append(cr)
    doc["line_items"].append(li)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    query = f"vast={version}&series=odd-mixed&pod_duration=15&max_ads=1"

    secure_client: Any = await make_client(catalog=str(path))
    xml = await _fetch(secure_client, query)
    (ad,) = _ads_in(xml)
    assert str(ad.get("id")) == "li-odd-mixed-cr-odd-mixed"
    urls = _media_urls(xml)
    assert "https://cdn.example/m/360.mp4" in urls
    assert [u for u in urls if not u.startswith("https://")] == []
    _check_static(xml, version, "https required: " + query)

    plain: Any = await make_client(catalog=str(path), require_https_media=False)
    xml = await _fetch(plain, query)
    assert "http://cdn.example/m/1080.mp4" in _media_urls(xml)
    assert c.validate_vast_xsd(xml, version) == []
    # the same server, asked for https media by OpenRTB imp.secure
    protocol = {"2.0": 2, "3.0": 3, "4.0": 7, "4.1": 11, "4.2": 13, "4.3": 15}[version]
    bid = {
        "id": "r1",
        "imp": [
            {"id": "1", "secure": 1, "video": {"poddur": 15, "maxseq": 1, "protocols": [protocol]}}
        ],
        "app": {"id": "a", "content": {"series": "odd-mixed"}},
        "device": {"devicetype": 3, "ip": "203.0.113.9", "ua": "Roku/DVP-12.0"},
    }
    resp = await plain.post("/openrtb2/pod", json=bid)
    assert resp.status == 200
    xml = bytes(await resp.read())
    (ad,) = _ads_in(xml)
    assert str(ad.get("id")) == "li-odd-mixed-cr-odd-mixed"
    urls = _media_urls(xml)
    assert urls and [u for u in urls if not u.startswith("https://")] == []
    _check_static(xml, version, "imp.secure")


async def test_progress_offsets_when_configured(make_client: ClientFactory) -> None:
    c.require_spec()
    client = await make_client(progress_offsets="5,10")
    for version in VERSIONS:
        xml = await _fetch(client, f"vast={version}&pod_duration=120&max_ads=4")
        _check_static(xml, version, f"progress {version}")
        root = etree.fromstring(xml)
        offsets = {
            e.get("offset")
            for e in root.iter()
            if isinstance(e.tag, str) and e.get("event") == "progress"
        }
        assert offsets == (set() if version == "2.0" else {"00:00:05.000", "00:00:10.000"})


@pytest.mark.parametrize("version", VERSIONS)
async def test_expires_is_the_sooner_of_token_and_reservation_lifetimes(
    make_client: ClientFactory, version: str
) -> None:
    """4.1+ inline ads say how long they stay valid (``<Expires>``, seconds, after
    ``<Creatives>``): the sooner of the 5-minute reservation and the token lifetime less
    the pod's length and a minute of pauses (an ad started then still counts its beacons
    to the end), at least 1; 4.0 and earlier have no such element."""
    c.require_spec()
    for max_age in (86400, 200, 60):
        client: Any = await make_client(token_max_age=max_age)
        xml = await _fetch(client, f"vast={version}&pod_duration=120&max_ads=4")
        _check_static(xml, version, f"expires {version}")
        ads = _ads_in(xml)
        assert ads
        pod_ms = 0
        for d in etree.fromstring(xml).iter("{*}Duration"):
            h, m, s = d.text.strip().split(":")  # type: ignore[union-attr]
            pod_ms += round((int(h) * 3600 + int(m) * 60 + float(s)) * 1000)
        want = max(1, min(300, max_age - math.ceil(pod_ms / 1000) - 60))
        assert want == {86400: 300, 200: 140 - math.ceil(pod_ms / 1000), 60: 1}[max_age]
        for ad in ads:
            inline = ad[0]
            names = [etree.QName(e).localname for e in inline if isinstance(e.tag, str)]
            if version in ("4.1", "4.2", "4.3"):
                assert names[names.index("Creatives") + 1] == "Expires", names
                assert [e.text for e in inline.iter("{*}Expires")] == [str(want)]
            else:
                assert "Expires" not in names


@pytest.fixture(scope="module")
def labelled_ntsc_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo catalog with competitive labels on line items and a creative, and one
    creative of an NTSC length (29.97 s)."""
    cat = json.loads(DEMO_CATALOG.read_text())
    for n, li in enumerate(cat["line_items"]):
        li["competitive_categories"] = [["snacks"], ["beer", "snacks"], []][n % 3]
    (ntsc,) = [cr for cr in cat["creatives"] if cr["id"] == "cr-streamly-originals-30"]
    ntsc.pop("duration", None)
    ntsc["duration_ms"] = 29_970
    ntsc["competitive_categories"] = ["streaming_tv"]
    path = tmp_path_factory.mktemp("labelled") / "catalog.json"
    path.write_text(json.dumps(cat))
    return path


@pytest.mark.parametrize("version", VERSIONS)
async def test_fractional_breaks_labels_and_previews(
    make_client: ClientFactory, labelled_ntsc_catalog: Path, version: str
) -> None:
    """What the competitive labels, fractional (NTSC) avails, previews and compression can
    change in what we emit, judged as everything else: pods from a labelled catalog, a
    29.97 s creative in a 29.97 s avail (its Duration to the millisecond), a previewed
    inline VMAP, a 2.0 VMAP's one-ad tags, and a gzipped pod once decompressed."""
    import gzip

    c.require_spec()
    client: Any = await make_client(catalog=str(labelled_ntsc_catalog))
    v = f"vast={version}"
    for query in (
        f"pod_duration=120&max_ads=4&device_type=ctv&{v}",
        f"pod_duration=29.97&min_ad_duration=29&device_type=ctv&{v}",
        f"pod_duration=59.94&max_ads=3&device_type=ctv&test=1&{v}",
    ):
        xml = await _fetch(client, query)
        assert _ads_in(xml), query
        c.assert_vast_conformant(xml, version)
    ntsc = await _fetch(client, f"pod_duration=29.97&min_ad_duration=29&{v}")
    assert b"00:00:29.970" in ntsc
    resp = await client.get(
        f"/vast?pod_duration=120&max_ads=4&{v}",
        headers={"Accept-Encoding": "gzip"},
        auto_decompress=False,
    )
    assert resp.headers["Content-Encoding"] == "gzip"
    c.assert_vast_conformant(gzip.decompress(await resp.read()), version)
    for vmap in (
        f"content_duration=1800&cue_points=600,1200&inline=1&test=1&{v}",
        f"content_duration=1800&cue_points=600,1200&{v}",
    ):
        resp = await client.get("/vmap?" + vmap)
        assert resp.status == 200, await resp.text()
        c.assert_vmap_conformant(bytes(await resp.read()))
