"""Third parties in our ads: VAST tags served as ``<Wrapper>`` ads, and tracking pixels beside
ours, from the catalog to the beacons, judged by the IAB XSDs, vastlint and the player
library."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from lxml import etree

from tests.conftest import DEMO_CATALOG, PUBLIC_URL, ClientFactory
from tests.support import conformance as c
from tests.test_catalog import demo_doc, errors_of, has_issue
from vastserver.catalog.load import parse_catalog

TAG = "https://ad.thirdparty.example/vast?id=123&ord=[CACHEBUSTING]"
VERSIONS = ("2.0", "3.0", "4.0", "4.1", "4.2", "4.3")


def wrapper_doc(tag: str = TAG) -> dict[str, Any]:
    """The demo catalog and a sponsorship of one show served by a third-party tag."""
    doc = demo_doc()
    doc["creatives"].append(
        {
            "id": "cr-tp-30",
            "advertiser_id": "adv-northstar",
            "title": "Northstar via its own ad server :30",
            "duration": 30,
            "universal_ad_id": "NRTH0009000H",
            "vast_tag_url": tag,
            "icons": [
                {
                    "program": "AdChoices",
                    "width": 20,
                    "height": 20,
                    "x_position": "right",
                    "y_position": "top",
                    "image_url": "https://icons.example/adchoices.png",
                    "creative_type": "image/png",
                }
            ],
        }
    )
    doc["line_items"].append(
        {
            "id": "li-tp",
            "campaign_id": "cmp-northstar-winter",
            "name": "Third-party tag on Tag Show",
            "tier": "sponsorship",
            "creative_ids": ["cr-tp-30"],
            "price": 40,
            "targeting": {"series": {"include": ["tag-show"]}},
            "slot": "first",
        }
    )
    return doc


@pytest.fixture
def wrapper_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(wrapper_doc()))
    return path


def test_a_tag_creative_loads_without_renditions() -> None:
    cr = parse_catalog(wrapper_doc()).creatives["cr-tp-30"]
    assert cr.vast_tag_url == TAG and cr.renditions == () and cr.duration_ms == 30_000


def test_a_tag_creative_has_no_media_or_click_through_of_its_own() -> None:
    doc = wrapper_doc()
    cr = doc["creatives"][-1]
    n = len(doc["creatives"]) - 1
    cr["renditions"] = demo_doc()["creatives"][0]["renditions"]
    cr["click_through"] = "https://brand.example/"
    cr["mezzanine"] = demo_doc()["creatives"][0].get("mezzanine") or {
        "url": "https://cdn.example/m.mov",
        "mime": "video/quicktime",
        "width": 1920,
        "height": 1080,
    }
    cr["skip_offset"] = 5  # a wrapper cannot carry a skipoffset: the tag's ad decides
    cr["captions"] = [{"url": "https://cdn.example/cc.vtt", "mime": "text/vtt", "language": "en"}]
    errors = errors_of(doc)
    for key in ("renditions", "click_through", "mezzanine", "skip_offset", "captions"):
        assert has_issue(errors, f"$.creatives[{n}].{key}", "not with 'vast_tag_url'"), errors
    doc = wrapper_doc()
    doc["creatives"][-1]["vast_tag_url"] = "not a url"
    assert any(e.path == f"$.creatives[{n}].vast_tag_url" for e in errors_of(doc))
    doc = wrapper_doc()
    doc["creatives"][-1]["renditions"] = []
    assert has_issue(errors_of(doc), f"$.creatives[{n}].renditions", "not with 'vast_tag_url'")
    doc = wrapper_doc()
    del doc["creatives"][-1]["vast_tag_url"]
    assert has_issue(errors_of(doc), f"$.creatives[{n}].renditions", "or give 'vast_tag_url'")


@pytest.mark.parametrize("version", VERSIONS)
async def test_wrapper_pods_pass_the_xsd_vastlint_and_the_player(
    make_client: ClientFactory, wrapper_catalog: Path, version: str
) -> None:
    c.require_spec()
    client: Any = await make_client(catalog=str(wrapper_catalog))
    docs = []
    for debug in ("0", "1"):
        resp = await client.get(
            f"/vast?vast={version}&series=tag-show&pod_duration=90&max_ads=3&debug={debug}"
        )
        assert resp.status == 200
        xml = bytes(await resp.read())
        root = etree.fromstring(xml)
        ads = [e for e in root if isinstance(e.tag, str) and etree.QName(e).localname == "Ad"]
        # VAST 2.0 has no pods: its break holds one ad, the sponsorship's
        assert (len(ads) == 1) if version == "2.0" else (len(ads) >= 2)
        first = ads[0][0]
        assert etree.QName(first).localname == "Wrapper"  # the sponsorship owns slot 1
        assert first.findtext("{*}VASTAdTagURI", "").strip() == TAG
        assert [etree.QName(a[0]).localname for a in ads[1:]] == ["InLine"] * (len(ads) - 1)
        assert c.validate_vast_xsd(xml, version) == []
        lint_errors, lint_warnings = c.vastlint_report(xml)
        assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings
        docs.append(xml)
    if not c.node_available():
        return
    for result in c.node_parse_many([d.decode() for d in docs], "vast"):
        assert result["ok"], result["error"]
        n = len(result["ads"])
        assert (n == 1) if version == "2.0" else (n >= 2)


async def test_a_wrapper_counts_its_impression_and_its_click(
    make_client: ClientFactory, wrapper_catalog: Path
) -> None:
    client: Any = await make_client(catalog=str(wrapper_catalog))
    resp = await client.get("/vast?series=tag-show&pod_duration=30&max_ads=1&device_id=w1")
    xml = await resp.text()
    assert "<Wrapper" in xml and "<ClickThrough" not in xml
    imp = re.search(r"<Impression[^>]*><!\[CDATA\[(.*?)\]\]>", xml)
    click = re.search(r"<ClickTracking[^>]*><!\[CDATA\[(.*?)\]\]>", xml)
    assert imp is not None and click is not None
    for url in (imp.group(1), click.group(1), click.group(1)):
        parts = urlsplit(url)
        r = await client.get(parts.path + "?" + parts.query)
        assert r.status == 204
    # the click beacon's token is for clicks only: it counts nowhere else
    tk = parse_qs(urlsplit(click.group(1)).query)["tk"][0]
    assert (await client.get(f"/t/impression?tk={tk}")).status == 403
    text = await (await client.get("/metrics")).text()
    assert 'vastserver_beacons_total{event="impression",result="ok"} 1.0' in text
    assert 'vastserver_beacons_total{event="click",result="ok"} 1.0' in text
    assert 'vastserver_beacons_total{event="click",result="replay"} 1.0' in text


async def test_an_http_tag_is_insecure_media(make_client: ClientFactory, tmp_path: Path) -> None:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(wrapper_doc("http://ad.thirdparty.example/vast?id=9")))
    client: Any = await make_client(catalog=str(path))
    body = await (await client.get("/decide?series=tag-show&pod_duration=30")).json()
    reasons = {t["line_item_id"]: t["reason"] for t in body["candidates"]}
    assert reasons["li-tp"] == "insecure_media"
    assert DEMO_CATALOG.exists()


TRACKERS = {
    "impression": ["https://px.example/imp?c=1&ord=[CACHEBUSTING]", "https://dv.example/i"],
    "click": ["https://px.example/click?c=1"],
    "start": ["https://px.example/start"],
    "complete": ["https://px.example/complete", "https://dv.example/complete"],
    "loaded": ["https://px.example/loaded"],  # VAST 4.1+ only
    "creativeView": ["https://px.example/view"],
}


@pytest.mark.parametrize("version", VERSIONS)
async def test_third_party_trackers_go_beside_ours(
    make_client: ClientFactory, tmp_path: Path, version: str
) -> None:
    c.require_spec()
    doc = wrapper_doc()
    for cr in doc["creatives"]:
        cr["trackers"] = TRACKERS
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    client: Any = await make_client(catalog=str(path))
    queries = [f"vast={version}&series=tag-show&pod_duration=90&max_ads=3"]
    if version == "2.0":  # one ad a break (no pods): the sponsorship's wrapper, so an inline
        queries.append(f"vast={version}&pod_duration=30")  # ad from another break
    xmls = [bytes(await (await client.get(f"/vast?{q}")).read()) for q in queries]
    ads = [
        e
        for xml in xmls
        for e in etree.fromstring(xml)
        if isinstance(e.tag, str) and etree.QName(e).localname == "Ad"
    ]
    assert {etree.QName(a[0]).localname for a in ads} == {"Wrapper", "InLine"}
    for ad in ads:
        imps = [(e.text or "").strip() for e in ad.iter("{*}Impression")]
        assert imps[1:] == TRACKERS["impression"] and "/t/impression?" in imps[0]
        clicks = [(e.text or "").strip() for e in ad.iter("{*}ClickTracking")]
        assert TRACKERS["click"][0] in clicks
        by_event: dict[str, list[str]] = {}
        for t in ad.iter("{*}Tracking"):
            by_event.setdefault(t.get("event", ""), []).append((t.text or "").strip())
        assert by_event["complete"][1:] == TRACKERS["complete"]
        assert by_event["start"][1:] == TRACKERS["start"]
        assert ("loaded" in by_event) == (version in ("4.1", "4.2", "4.3"))
        assert by_event["creativeView"][1:] == TRACKERS["creativeView"]  # 4.x too (vast4.xsd)
        if "loaded" in by_event:
            assert by_event["loaded"][1:] == TRACKERS["loaded"]
    for xml in xmls:
        assert c.validate_vast_xsd(xml, version) == []
        lint_errors, lint_warnings = c.vastlint_report(xml)
        assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings
    if c.node_available():
        for result in c.node_parse_many([xml.decode() for xml in xmls], "vast"):
            assert result["ok"], result["error"]


async def test_internationalised_urls_go_out_in_ascii_form(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A catalog's media files, trackers and tags with a non-ASCII host or path went into
    the VAST as written: valid IRIs (``anyURI``), but not every CTV player's HTTP stack
    fetches one. They now go out as URIs: the host in IDNA form, the rest percent-encoded
    as UTF-8, the IAB macros' brackets untouched."""
    doc = wrapper_doc("https://tägs.example/vast/ü?id=1&ord=[CACHEBUSTING]")
    for cr in doc["creatives"]:
        cr["trackers"] = {"impression": ["https://px.example/imp/ä?ord=[CACHEBUSTING]"]}
        for r in cr.get("renditions", []):
            r["url"] = r["url"].replace("/ads/", "/ads/ö/")
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    client: Any = await make_client(catalog=str(path))
    xml = bytes(await (await client.get("/vast?series=tag-show&pod_duration=90&max_ads=3")).read())
    root = etree.fromstring(xml)
    [tag] = [(e.text or "").strip() for e in root.iter("{*}VASTAdTagURI")]
    assert tag == "https://xn--tgs-qla.example/vast/%C3%BC?id=1&ord=[CACHEBUSTING]"
    imps = [(e.text or "").strip() for e in root.iter("{*}Impression")]
    assert imps.count("https://px.example/imp/%C3%A4?ord=[CACHEBUSTING]") == len(imps) // 2 >= 2
    media = [(e.text or "").strip() for e in root.iter("{*}MediaFile")]
    assert media and all("/ads/%C3%B6/" in m for m in media), media
    urls = [
        (e.text or "").strip()
        for e in root.iter()
        if isinstance(e.tag, str) and (e.text or "").strip().startswith("http")
    ]
    assert urls and all(u.isascii() for u in urls), [u for u in urls if not u.isascii()]
    lint_errors, lint_warnings = c.vastlint_report(xml)
    assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings
    if c.SHARED_SPEC is not None:
        assert c.validate_vast_xsd(xml, "4.2") == []


def test_trackers_are_checked() -> None:
    doc = wrapper_doc()
    n = len(doc["creatives"]) - 1
    doc["creatives"][-1]["trackers"] = {
        "impresion": ["https://px.example/i"],
        "start": ["not a url"],
        "complete": [f"https://px.example/{i}" for i in range(9)],
        "midpoint": [],
    }
    errors = errors_of(doc)
    base = f"$.creatives[{n}].trackers"
    assert has_issue(errors, f"{base}.impresion", "is not one of")
    assert any(e.path == f"{base}.start[0]" for e in errors), errors
    assert has_issue(errors, f"{base}.complete", "at most 8")
    assert any(e.path == f"{base}.midpoint" for e in errors), errors


ANY_URI = etree.XMLSchema(
    etree.fromstring(
        b'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">'
        b'<xs:element name="u" type="xs:anyURI"/></xs:schema>'
    )
)


@pytest.mark.parametrize(
    "tag",
    [
        "https://ad.tp.example/vast?id=1&ord=[CACHEBUSTING]&ts=[TIMESTAMP]",
        "https://ad.tp.example/vast?p=%%CACHEBUSTER%%",
        "https://ad.tp.example/vast?q=%ZZ",
        "https://ad.tp.example/vast?q=%2",
        "https://ad.tp.example/vast?q=%20&r=%7B",
        "https://ad.tp.example/vast?a=[]&c=[not-a-macro",
        "https://ad.tp.example/vast?x=]]>&y=<z>",
        "https://ad.tp.example/vast#one#two",
        "https://ad.tp.example/vast?gdpr=${GDPR}&c=\u00e9",
        "https://[2001:db8::1]/vast?x=1",
        "https://[2001:db8::1]:8443/vast?x=1",
        "https://user:pw@ad.tp.example:8080/vast",
        "https://%%SITE%%.px.example/i",
        "https://ex%zzmple.com/x",
        "https://u%zz@example.com/x",
        "https://px.example:/i",
        "https://[::1]@px.example/i",
        "https://a@b@example.com/x",
        "https://AD.TP.EXAMPLE/Vast?Q=1",
        "https://xn--bcher-kva.example/v?q=%C3%A9",
    ],
)
def test_catalog_urls_are_what_the_xsd_calls_a_uri(tag: str) -> None:
    """A URL the catalog accepts must validate as the XSDs' anyURI once a player fills in
    the IAB macros, and one that would not is refused with the reason (a third-party tag
    with %%MACRO%% macros produced VAST that failed every XSD). Characters no URI may hold
    unencoded (``<``, ``{``...) are refused even where libxml2's anyURI lets them by:
    vastlint warns on them. A tag's privacy macros (``${GDPR}``) are filled in by the
    server, percent-encoded: the URI is checked with a value in their place."""
    filled = re.sub(r"\[[A-Z][A-Z0-9_]*\]", "0", tag)
    filled = re.sub(r"\$\{GDPR\}", "1", filled)
    elem = etree.Element("u")
    elem.text = filled
    valid = ANY_URI.validate(etree.fromstring(etree.tostring(elem)))
    doc = wrapper_doc(tag)
    if re.search(r'["<>\\^`{|}]', filled):
        n = len(doc["creatives"]) - 1
        errors = errors_of(doc)
        assert has_issue(errors, f"$.creatives[{n}].vast_tag_url", "a URI cannot hold"), errors
    elif valid:  # loaded in its ASCII form: the one non-ASCII character percent-encoded
        got = parse_catalog(doc).creatives["cr-tp-30"].vast_tag_url
        assert got == tag.replace("\u00e9", "%C3%A9") and got.isascii()
    else:
        n = len(doc["creatives"]) - 1
        errors = errors_of(doc)
        assert has_issue(errors, f"$.creatives[{n}].vast_tag_url", "not a valid URI"), errors


def test_trackers_are_https_and_skip_needs_a_skip_offset() -> None:
    doc = demo_doc()
    cr = doc["creatives"][0]
    cr.pop("skip_offset", None)
    cr.pop("skip_offset_ms", None)
    cr["trackers"] = {"start": ["http://px.example/s"], "skip": ["https://px.example/k"]}
    errors = errors_of(doc)
    assert has_issue(errors, "$.creatives[0].trackers.start[0]", "must be https")
    assert has_issue(errors, "$.creatives[0].trackers.skip", "needs a skip offset")
    cr["trackers"] = {"start": ["https://px.example/s"], "skip": ["https://px.example/k"]}
    cr["skip_offset"] = 5
    creative = parse_catalog(doc).creatives[cr["id"]]
    assert creative.trackers["skip"] == ("https://px.example/k",)
    assert hash(creative) == hash(creative)  # trackers do not make a creative unhashable


PRIVACY_PIXEL = (
    "https://px.example/imp?gdpr=${GDPR}&gdpr_consent=${GDPR_CONSENT_755}"
    "&gdpr_pd=${GDPR_PD}&ord=[CACHEBUSTING]"
)
PRIVACY_TRACKERS = {
    "impression": [PRIVACY_PIXEL, "https://dv.example/i?c=1"],
    "click": ["https://px.example/c?us=${US_PRIVACY}&gpp=${GPP_STRING_32}&sid=${GPP_SID}"],
    "complete": ["https://px.example/done/${GDPR_CONSENT_1}?g=${GDPR}"],
}


def privacy_doc() -> dict[str, Any]:
    """:func:`wrapper_doc` with privacy macros in every creative's trackers."""
    doc = wrapper_doc()
    for cr in doc["creatives"]:
        cr["trackers"] = PRIVACY_TRACKERS
    return doc


def test_trackers_may_carry_the_privacy_macros() -> None:
    catalog = parse_catalog(privacy_doc())
    cr = catalog.creatives["cr-tp-30"]
    assert cr.trackers["impression"] == (PRIVACY_PIXEL, "https://dv.example/i?c=1")
    assert cr.privacy_macros
    assert not parse_catalog(wrapper_doc()).creatives["cr-tp-30"].privacy_macros


def test_unknown_and_misplaced_dollar_macros_are_refused_every_one() -> None:
    doc = wrapper_doc()
    n = len(doc["creatives"]) - 1
    doc["creatives"][-1]["trackers"] = {
        "impression": [
            "https://px.example/i?ac=${ADDTL_CONSENT}",  # no request carries it
            "https://px.example/i?g=${gdpr}",  # the IAB writes them in capitals
            "https://px.example/i?c=${GDPR_CONSENT_0}",  # GVL ids start at 1
            "https://px.example/i?c=${GDPR_CONSENT_65536}",  # and are 16-bit
            "https://px.example/i?c=${GDPR_CONSENT_XXXXX}",
            "https://px.example/i?g=${GDPR",
            "https://${GDPR}.px.example/i",
        ],
        "start": ["http://px.example/s?g=${GDPR}"],
    }
    doc["creatives"][0]["click_through"] = "https://brand.example/?g=${GDPR}"
    errors = errors_of(doc)
    base = f"$.creatives[{n}].trackers"
    for i, macro in enumerate(
        ("${ADDTL_CONSENT}", "${gdpr}", "${GDPR_CONSENT_0}", "${GDPR_CONSENT_65536}")
    ):
        assert has_issue(errors, f"{base}.impression[{i}]", f'{macro}" is no privacy macro')
    assert has_issue(errors, f"{base}.impression[4]", "is no privacy macro"), errors
    assert has_issue(errors, f"{base}.impression[5]", "a URI cannot hold"), errors
    assert has_issue(errors, f"{base}.impression[6]", "after the host"), errors
    assert has_issue(errors, f"{base}.start[0]", "must be https"), errors
    # only trackers get them filled in
    assert has_issue(
        errors, "$.creatives[0].click_through", "filled in only in a creative's trackers"
    ), errors


def _trackers(xml: bytes) -> tuple[list[str], list[str], list[str]]:
    """The third-party impression, click and complete URLs of the first ad."""
    ad = next(e for e in etree.fromstring(xml).iter("{*}Ad"))
    imps = [(e.text or "").strip() for e in ad.iter("{*}Impression")]
    clicks = [(e.text or "").strip() for e in ad.iter("{*}ClickTracking")]
    done = [(t.text or "").strip() for t in ad.iter("{*}Tracking") if t.get("event") == "complete"]
    return imps[1:], [u for u in clicks if "px.example" in u], done[1:]


@pytest.mark.parametrize("version", VERSIONS)
async def test_privacy_macros_are_filled_in_per_request(
    make_client: ClientFactory, tmp_path: Path, version: str
) -> None:
    from tests.test_consent import tc_string

    c.require_spec()
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(privacy_doc()))
    client: Any = await make_client(catalog=str(path))
    tc = tc_string({1, 2, 3, 4}, vendors={755})
    base = f"/vast?vast={version}&series=tag-show&pod_duration=90&max_ads=3"

    xml = bytes(await (await client.get(f"{base}&gdpr=1&gdpr_consent={tc}")).read())
    imps, clicks, done = _trackers(xml)
    assert imps == [
        f"https://px.example/imp?gdpr=1&gdpr_consent={tc}&gdpr_pd=1&ord=[CACHEBUSTING]",
        "https://dv.example/i?c=1",
    ]
    assert clicks == ["https://px.example/c?us=&gpp=&sid="]
    assert done == [f"https://px.example/done/{tc}?g=1"]
    assert "${" not in xml.decode()
    assert c.validate_vast_xsd(xml, version) == []
    lint_errors, lint_warnings = c.vastlint_report(xml)
    assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings

    # nothing sent: the callee decides whether the GDPR applies; no TC string
    xml = bytes(await (await client.get(base)).read())
    imps, clicks, done = _trackers(xml)
    assert imps[0] == "https://px.example/imp?gdpr=&gdpr_consent=&gdpr_pd=1&ord=[CACHEBUSTING]"
    assert done == ["https://px.example/done/?g="]
    assert c.validate_vast_xsd(xml, version) == []

    # gdpr=0, US Privacy and GPP; values a URL cannot hold as they are get percent-encoded
    q = "gdpr=0&us_privacy=1YNN&gpp=DBABQw~BmYAAABA.QA&gpp_sid=7,8&gdpr_consent=a%20b%26c"
    xml = bytes(await (await client.get(f"{base}&{q}")).read())
    imps, clicks, done = _trackers(xml)
    assert imps[0].startswith("https://px.example/imp?gdpr=0&gdpr_consent=a%20b%26c&")
    assert clicks == ["https://px.example/c?us=1YNN&gpp=DBABQw~BmYAAABA.QA&sid=7,8"]
    assert c.validate_vast_xsd(xml, version) == []
    lint_errors, lint_warnings = c.vastlint_report(xml)
    assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings


async def _openrtb_pod(
    client: Any,
    regs: dict[str, Any],
    user: dict[str, Any],
    device: dict[str, Any] | None = None,
) -> bytes:
    """The VAST of a ``/openrtb2/pod`` bid for a Tag Show break with these privacy signals
    (and ``device``, when given)."""
    body: dict[str, Any] = {
        "id": "r1",
        "imp": [{"id": "1", "video": {"poddur": 90, "maxseq": 3, "mimes": ["video/mp4"]}}],
        "site": {"content": {"series": "tag-show"}},
        "user": user,
        "regs": regs,
    }
    if device is not None:
        body["device"] = device
    resp = await client.post("/openrtb2/pod", data=json.dumps(body))
    assert resp.status == 200, await resp.text()
    text = await resp.text()
    m = re.search(r"<VAST.*</VAST>", text, re.S)
    assert m is not None, text[:400]
    return m.group().encode()


async def test_openrtb_privacy_signals_fill_the_macros(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    from tests.test_consent import GPP_WITH_TCF, tc_string

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(privacy_doc()))
    client: Any = await make_client(catalog=str(path))
    tc = tc_string({1, 2, 3, 4})

    async def trackers(regs: dict[str, Any], user: dict[str, Any]) -> tuple[list[str], ...]:
        return _trackers(await _openrtb_pod(client, regs, user))

    imps, _, done = await trackers({"gdpr": 1}, {"consent": tc})
    assert (
        imps[0] == f"https://px.example/imp?gdpr=1&gdpr_consent={tc}&gdpr_pd=1&ord=[CACHEBUSTING]"
    )
    assert done == [f"https://px.example/done/{tc}?g=1"]
    imps, _, _ = await trackers({"ext": {"gdpr": 1}}, {"ext": {"consent": tc}})  # 2.5
    assert f"gdpr=1&gdpr_consent={tc}&" in imps[0]
    # a GPP string's EU TCF section makes the GDPR apply and stands in for user.consent
    _, clicks, done = await trackers(
        {"gpp": GPP_WITH_TCF, "gpp_sid": [2], "us_privacy": "1YNN"}, {}
    )
    assert clicks == [f"https://px.example/c?us=1YNN&gpp={GPP_WITH_TCF}&sid=2"]
    assert done == [f"https://px.example/done/{GPP_WITH_TCF.split('~')[1]}?g=1"]
    imps, clicks, _ = await trackers({}, {})
    assert imps[0] == "https://px.example/imp?gdpr=&gdpr_consent=&gdpr_pd=1&ord=[CACHEBUSTING]"
    assert clicks == ["https://px.example/c?us=&gpp=&sid="]


async def test_gdpr_by_geo_fills_the_macros_as_gdpr_1(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """``VASTSERVER_GDPR_BY_GEO``: a request without GDPR signals from Germany tells the
    third parties ``${GDPR}`` = 1 (and no TC string), as an explicit ``gdpr=1`` without
    consent does: /vast, an inline VMAP's pods and OpenRTB. ``gdpr=0`` stays 0, and the US
    (or the setting off) leaves it empty, for the callee to decide."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(privacy_doc()))
    client: Any = await make_client(catalog=str(path), gdpr_by_geo="1")
    off: Any = await make_client(catalog=str(path))
    base = "/vast?series=tag-show&pod_duration=90&max_ads=3"
    gdpr_1 = "https://px.example/imp?gdpr=1&gdpr_consent=&gdpr_pd=1&ord=[CACHEBUSTING]"
    unsaid = "https://px.example/imp?gdpr=&gdpr_consent=&gdpr_pd=1&ord=[CACHEBUSTING]"

    async def first_imp(c: Any, url: str) -> str:
        return _trackers(bytes(await (await c.get(url)).read()))[0][0]

    explicit = await first_imp(client, f"{base}&country=US&gdpr=1")
    assert explicit == gdpr_1
    for where in ("device_ip=2001:db8::5", "country=FR", "device_ip=192.0.2.10", "country=CH"):
        assert await first_imp(client, f"{base}&{where}") == explicit, where
        assert (await first_imp(client, f"{base}&{where}&gdpr=0")).startswith(
            "https://px.example/imp?gdpr=0&"
        )
        assert await first_imp(off, f"{base}&{where}") == unsaid
    assert await first_imp(client, f"{base}&country=US") == unsaid
    _, _, done = _trackers(bytes(await (await client.get(f"{base}&country=DE")).read()))
    assert done == ["https://px.example/done/?g=1"]

    # an inline VMAP's pods are decided as their tags' /vast would decide them
    resp = await client.get(
        "/vmap?inline=1&content_duration=600&cue_points=300&series=tag-show&country=DE"
    )
    assert resp.status == 200
    vmap = await resp.read()
    pods = [etree.tostring(v) for v in etree.fromstring(vmap).iter("{*}VAST")]
    assert pods
    for pod in pods:
        imps = [u for u in _all_imps(pod) if "px.example" in u]
        assert imps and all(u == gdpr_1 for u in imps), imps

    imps, _, _ = _trackers(await _openrtb_pod(client, {}, {}, {"geo": {"country": "DEU"}}))
    assert imps[0] == gdpr_1
    imps, _, _ = _trackers(await _openrtb_pod(client, {"gdpr": 0}, {}, {"geo": {"country": "DEU"}}))
    assert imps[0].startswith("https://px.example/imp?gdpr=0&")
    imps, _, _ = _trackers(await _openrtb_pod(client, {}, {}, {"geo": {"country": "USA"}}))
    assert imps[0] == unsaid


def _all_imps(xml: bytes) -> list[str]:
    return [(e.text or "").strip() for e in etree.fromstring(xml).iter("{*}Impression")]


PRIVACY_TAG = (
    "https://ad.thirdparty.example/vast?id=123&gdpr=${GDPR}&gdpr_consent=${GDPR_CONSENT_755}"
    "&gdpr_pd=${GDPR_PD}&us_privacy=${US_PRIVACY}&gpp=${GPP_STRING_755}&gpp_sid=${GPP_SID}"
    "&ord=[CACHEBUSTING]&t=[TIMESTAMP]"
)
"""A tag passing every privacy signal on to its ad server, beside player macros."""


def _tag(**values: str) -> str:
    """:data:`PRIVACY_TAG` as it goes out with these values (empty when not given)."""
    v = {k: values.get(k, "") for k in ("gdpr", "tc", "us", "gpp", "sid")}
    return (
        f"https://ad.thirdparty.example/vast?id=123&gdpr={v['gdpr']}&gdpr_consent={v['tc']}"
        f"&gdpr_pd=1&us_privacy={v['us']}&gpp={v['gpp']}&gpp_sid={v['sid']}"
        "&ord=[CACHEBUSTING]&t=[TIMESTAMP]"
    )


def test_a_vast_tag_url_may_carry_the_privacy_macros() -> None:
    cr = parse_catalog(wrapper_doc(PRIVACY_TAG)).creatives["cr-tp-30"]
    assert cr.vast_tag_url == PRIVACY_TAG and cr.trackers == {}
    assert cr.privacy_macros  # decided at load: the renderer fills the tag in
    assert not parse_catalog(wrapper_doc()).creatives["cr-tp-30"].privacy_macros


def test_unknown_dollar_macros_in_a_vast_tag_url_are_refused_every_one() -> None:
    doc = wrapper_doc("https://ad.thirdparty.example/vast?ac=${ADDTL_CONSENT}&g=${GDPR}")
    n = len(doc["creatives"]) - 1
    for k, tag in enumerate(
        (
            "https://ad.thirdparty.example/vast?c=${GDPR_CONSENT_65536}",
            "https://${GDPR}.thirdparty.example/vast",
            "https://ad.thirdparty.example/vast?g=${GDPR",
        )
    ):
        doc["creatives"].append({**doc["creatives"][n], "id": f"cr-tp-bad-{k}"})
        doc["creatives"][-1]["vast_tag_url"] = tag
    doc["creatives"][n]["trackers"] = {"impression": ["https://px.example/i?g=${gdpr}"]}
    errors = errors_of(doc)
    assert has_issue(
        errors, f"$.creatives[{n}].vast_tag_url", '"${ADDTL_CONSENT}" is no privacy macro'
    ), errors
    assert has_issue(errors, f"$.creatives[{n}].trackers.impression[0]", "is no privacy macro")
    tag = "vast_tag_url"
    assert has_issue(errors, f"$.creatives[{n + 1}].{tag}", "is no privacy macro"), errors
    assert has_issue(errors, f"$.creatives[{n + 2}].{tag}", "after the host"), errors
    assert has_issue(errors, f"$.creatives[{n + 3}].{tag}", "a URI cannot hold"), errors


def _tag_uri(xml: bytes) -> str:
    """The first ad's (the sponsorship's wrapper) VASTAdTagURI."""
    ad = next(e for e in etree.fromstring(xml).iter("{*}Ad"))
    assert etree.QName(ad[0]).localname == "Wrapper"
    return ad[0].findtext("{*}VASTAdTagURI", "").strip()


@pytest.mark.parametrize("version", VERSIONS)
async def test_privacy_macros_in_a_vast_tag_url_are_filled_in_per_request(
    make_client: ClientFactory, tmp_path: Path, version: str
) -> None:
    from tests.test_consent import tc_string

    c.require_spec()
    doc = wrapper_doc(PRIVACY_TAG)
    doc["creatives"][-1]["trackers"] = {"impression": [PRIVACY_PIXEL]}  # the wrapper's own
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    client: Any = await make_client(catalog=str(path))
    base = f"/vast?vast={version}&series=tag-show&pod_duration=90&max_ads=3"
    docs = []
    # two consent strings in turn, twice: each request gets its own (the cached fragment
    # of the wrapper holds slots, never the values of the request that filled it first)
    tcs = (tc_string({1, 2, 3, 4}, vendors={755}), tc_string({1}, vendors={1, 755}))
    assert tcs[0] != tcs[1]
    for tc in (*tcs, *tcs):
        xml = bytes(await (await client.get(f"{base}&gdpr=1&gdpr_consent={tc}")).read())
        assert _tag_uri(xml) == _tag(gdpr="1", tc=tc)
        imps, _, _ = _trackers(xml)
        assert imps == [
            f"https://px.example/imp?gdpr=1&gdpr_consent={tc}&gdpr_pd=1&ord=[CACHEBUSTING]"
        ]
        docs.append(xml)
    # no signals: the documented empty values (GDPR_PD is always 1)
    xml = bytes(await (await client.get(base)).read())
    assert _tag_uri(xml) == _tag()
    docs.append(xml)
    # US Privacy, GPP, gdpr=0; what a URL cannot hold as it is gets percent-encoded
    q = "gdpr=0&us_privacy=1YNN&gpp=DBABQw~BmYAAABA.QA&gpp_sid=7,8&gdpr_consent=a%20b%26c"
    xml = bytes(await (await client.get(f"{base}&{q}")).read())
    want = _tag(gdpr="0", tc="a%20b%26c", us="1YNN", gpp="DBABQw~BmYAAABA.QA", sid="7,8")
    assert _tag_uri(xml) == want
    docs.append(xml)
    # the debug render (the full template path) fills it in alike
    xml = bytes(await (await client.get(f"{base}&{q}&debug=1")).read())
    assert _tag_uri(xml) == want
    docs.append(xml)
    for xml in docs:
        assert "${" not in xml.decode()
        assert c.validate_vast_xsd(xml, version) == []
        lint_errors, lint_warnings = c.vastlint_report(xml)
        assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings
    if not c.node_available():
        return
    results = c.node_parse_many([d.decode() for d in docs], "vast")
    for result, xml in zip(results, docs, strict=True):
        assert result["ok"], result["error"]
        assert result["ads"][0]["isWrapper"]
        assert result["ads"][0]["vastAdTagURI"] == _tag_uri(xml)


async def test_openrtb_privacy_signals_fill_the_vast_tag_url(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    from tests.test_consent import GPP_WITH_TCF, tc_string

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(wrapper_doc(PRIVACY_TAG)))
    client: Any = await make_client(catalog=str(path))

    async def tag_uri(regs: dict[str, Any], user: dict[str, Any]) -> str:
        return _tag_uri(await _openrtb_pod(client, regs, user))

    for tc in (tc_string({1, 2, 3, 4}), tc_string({1, 2})):
        assert await tag_uri({"gdpr": 1}, {"consent": tc}) == _tag(gdpr="1", tc=tc)
    tc = tc_string({1})
    assert await tag_uri({"ext": {"gdpr": 1}}, {"ext": {"consent": tc}}) == _tag(gdpr="1", tc=tc)
    got = await tag_uri({"gpp": GPP_WITH_TCF, "gpp_sid": [2], "us_privacy": "1YNN"}, {})
    tcf = GPP_WITH_TCF.split("~")[1]
    assert got == _tag(gdpr="1", tc=tcf, us="1YNN", gpp=GPP_WITH_TCF, sid="2")
    assert await tag_uri({}, {}) == _tag()


# --------------------------------------------------------------------------------------------
# Device macros: withheld (VAST 4.3 section 6.1's -2) for a viewer who refused tracking
# --------------------------------------------------------------------------------------------

DEVICE_QUERY = (
    "ifa=[IFA]&ifa_type=[IFATYPE]&ip=[DEVICEIP]&ua=[DEVICEUA]&ll=[LATLONG]"
    "&lmt=[LIMITADTRACKING]&ord=[CACHEBUSTING]&player=[CLIENTUA]"
)
WITHHELD_QUERY = "ifa=-2&ifa_type=-2&ip=-2&ua=-2&ll=-2&lmt=1&ord=[CACHEBUSTING]&player=[CLIENTUA]"
DEVICE_MACRO_NAMES = ("[IFA]", "[IFATYPE]", "[DEVICEIP]", "[DEVICEUA]", "[LATLONG]")
ZERO_IFA = "00000000-0000-0000-0000-000000000000"


def device_doc(query: str = DEVICE_QUERY) -> dict[str, Any]:
    """:func:`wrapper_doc` with the device macros (or ``query``) in every URL of every
    creative a third party answers: the tag, trackers of several events, icons' trackers,
    click-through and image, verification scripts and their ``verificationNotExecuted``
    trackers, media, mezzanine and caption files."""
    doc = wrapper_doc(f"https://ad.thirdparty.example/vast?{query}")
    for cr in doc["creatives"]:
        cr["trackers"] = {
            "impression": [f"https://px.example/imp?{query}&g=${{GDPR}}"],
            "complete": [f"https://px.example/done?{query}"],
            "click": [f"https://px.example/c?{query}"],
        }
        for r in (*cr.get("renditions", ()), *cr.get("captions", ())):
            r["url"] += f"?{query}"
        if cr.get("mezzanine"):
            cr["mezzanine"]["url"] += f"?{query}"
        cr["icons"] = [
            {
                "program": "AdChoices",
                "width": 20,
                "height": 20,
                "x_position": "right",
                "y_position": "top",
                "image_url": f"https://icons.example/adchoices.png?{query}",
                "creative_type": "image/png",
                "click_through": f"https://icons.example/why?{query}",
                "view_tracking_urls": [f"https://icons.example/v?{query}"],
                "click_tracking_urls": [f"https://icons.example/c?{query}"],
            }
        ]
        cr["verifications"] = [
            {
                "vendor": "verify.example-omid",
                "js_url": f"https://verify.example/omid.js?{query}",
                "parameters": "{}",
                "not_executed_urls": [f"https://verify.example/ne?r=[REASON]&{query}"],
            }
        ]
    return doc


async def _device_client(make_client: ClientFactory, tmp_path: Path) -> Any:
    """A server of :func:`device_doc`."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(device_doc()))
    return await make_client(catalog=str(path))


def _third_party_urls(xml: bytes) -> list[str]:
    """Every URL of the document that is not ours: the catalog's."""
    out = []
    for e in etree.fromstring(xml).iter():
        text = (e.text or "").strip()
        if text.startswith("http") and not text.startswith(PUBLIC_URL):
            out.append(text)
    return out


def _own_urls(xml: bytes) -> list[str]:
    """Our beacons and click-throughs (tokens cut off: they differ between requests)."""
    out = []
    for e in etree.fromstring(xml).iter():
        text = (e.text or "").strip()
        if text.startswith(PUBLIC_URL):
            out.append(re.sub(r"tk=[^&]*", "tk=", text))
    return out


def _assert_withheld(xml: bytes, least: int = 8) -> None:
    text = xml.decode()
    for name in (*DEVICE_MACRO_NAMES, "[LIMITADTRACKING]"):
        assert name not in text, name
    urls = _third_party_urls(xml)
    assert len(urls) >= least, urls
    assert [u for u in urls if WITHHELD_QUERY not in u] == []


def _assert_untouched(xml: bytes, least: int = 8) -> None:
    urls = _third_party_urls(xml)
    assert len(urls) >= least, urls
    assert [u for u in urls if DEVICE_QUERY not in u] == []
    assert "=-2" not in xml.decode()


def _refusals() -> dict[str, str]:
    from tests.test_consent import tc_string

    return {
        "lmt": "lmt=1",
        "zero_ifa": f"device_id={ZERO_IFA}",
        "gdpr_without_consent": f"gdpr=1&gdpr_consent={tc_string({2, 3, 4})}",
    }


def _consents() -> dict[str, str]:
    from tests.test_consent import tc_string

    return {
        "lmt0": "lmt=0&device_id=6d92078a-8246-4ba4-ae5b-76104861e7dc",
        "gdpr_consent": f"gdpr=1&gdpr_consent={tc_string({1, 2, 3, 4})}",
        "nothing": "",
    }


def test_the_device_macros_are_withheld_with_the_value_vast_gives_for_policy() -> None:
    from vastserver.tracking import (
        DEVICE_MACROS,
        WITHHELD,
        fill_server_macros,
        has_server_macros,
        server_macros,
    )

    refused = server_macros(refused=True, child_directed=False, gdpr=False)

    def withhold_device_macros(url: str) -> str:
        return fill_server_macros(url, refused)

    assert WITHHELD == "-2"  # VAST 4.3, 6.1: known, but not shared because of policy
    assert DEVICE_MACROS["LIMITADTRACKING"] == "1"
    url = f"https://px.example/i?{DEVICE_QUERY}"
    assert has_server_macros(url)
    assert withhold_device_macros(url) == f"https://px.example/i?{WITHHELD_QUERY}"
    plain = "https://px.example/i?ord=[CACHEBUSTING]&t=[TIMESTAMP]&c=[CLIENTUA]&s=[SERVERUA]"
    assert not has_server_macros(plain)
    assert withhold_device_macros(plain) == plain
    # percent-encoded brackets are literal text, which no player fills in
    assert withhold_device_macros("https://px.example/%5BIFA%5D") == "https://px.example/%5BIFA%5D"


@pytest.mark.parametrize("version", VERSIONS)
async def test_device_macros_are_withheld_for_a_viewer_who_refused_tracking(
    make_client: ClientFactory, tmp_path: Path, version: str
) -> None:
    c.require_spec()
    client = await _device_client(make_client, tmp_path)
    base = f"/vast?vast={version}&series=tag-show&pod_duration=90&max_ads=3"
    # VAST 2.0 has no pods: its one ad is the sponsorship's wrapper (tag, trackers and
    # verification: 6 URLs; 2.0 has no icons)
    least = 6 if version == "2.0" else 8
    refusals, consents = _refusals(), _consents()
    sessions = iter(range(100))

    async def get(q: str) -> bytes:  # a session of its own: no caps from the others
        resp = await client.get(f"{base}&session=s{next(sessions)}&{q}")
        assert resp.status == 200, await resp.text()
        return bytes(await resp.read())

    docs = []
    # refused and consenting viewers in turn, twice: the cached fragments of one never
    # answer the other
    for _ in range(2):
        for (_, refused), (_, consented) in zip(refusals.items(), consents.items(), strict=True):
            xml = await get(refused)
            _assert_withheld(xml, least)
            docs.append(xml)
            other = await get(consented)
            _assert_untouched(other, least)
            docs.append(other)
            # our own beacons carry no device macro to withhold, and keep their macros
            for doc in (xml, other):
                own = _own_urls(doc)
                assert own and all("[CACHEBUSTING]" in u and "=-2" not in u for u in own)
                macros = {m for u in own for m in re.findall(r"\[([A-Z]+)\]", u)}
                assert macros <= {"CACHEBUSTING", "TIMESTAMP", "ADPLAYHEAD", "ERRORCODE"}
    # the debug render (the full template path) withholds alike
    xml = await get("lmt=1&debug=1")
    _assert_withheld(xml, least)
    docs.append(xml)
    _assert_untouched(await get("debug=1"), least)
    for xml in docs[:4]:
        assert c.validate_vast_xsd(xml, version) == []
        lint_errors, lint_warnings = c.vastlint_report(xml)
        assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings
    if c.node_available():
        for result in c.node_parse_many([d.decode() for d in docs[:2]], "vast"):
            assert result["ok"], result["error"]


async def test_device_macros_are_withheld_in_an_inline_vmap(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    c.require_spec()
    client = await _device_client(make_client, tmp_path)
    base = "/vmap?inline=1&series=tag-show&content_duration=1200&preroll=1&midroll_interval=600"
    for refused, consented in zip(_refusals().values(), _consents().values(), strict=True):
        resp = await client.get(f"{base}&{refused}")
        assert resp.status == 200, await resp.text()
        xml = bytes(await resp.read())
        assert b"<vmap:VASTAdData>" in xml
        _assert_withheld(xml)
        assert c.validate_vmap_xsd(xml) == []
        xml = bytes(await (await client.get(f"{base}&{consented}")).read())
        _assert_untouched(xml)


async def test_openrtb_withholds_the_device_macros_of_a_viewer_who_refused_tracking(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    from tests.test_consent import tc_string

    client = await _device_client(make_client, tmp_path)

    async def pod(device: dict[str, Any], regs: dict[str, Any], user: dict[str, Any]) -> bytes:
        return await _openrtb_pod(client, regs, user, device)

    no_consent = {"consent": tc_string({2, 3, 4})}
    for _ in range(2):
        _assert_withheld(await pod({"lmt": 1}, {}, {}))
        _assert_untouched(await pod({"lmt": 0}, {}, {}))
        _assert_withheld(await pod({"ifa": ZERO_IFA}, {}, {}))
        _assert_untouched(await pod({}, {"gdpr": 1}, {"consent": tc_string({1, 2, 3, 4})}))
        _assert_withheld(await pod({}, {"gdpr": 1}, no_consent))


CHILD_QUERY = (
    "ifa=-2&ifa_type=-2&ip=-2&ua=-2&ll=-2"
    "&lmt=[LIMITADTRACKING]&ord=[CACHEBUSTING]&player=[CLIENTUA]"
)
""":data:`DEVICE_QUERY` served on child-directed content: the identifiers withheld, the
device's own limit-ad-tracking setting left for the player (the viewer refused nothing)."""


def _assert_child_directed(xml: bytes) -> None:
    text = xml.decode()
    for name in DEVICE_MACRO_NAMES:
        assert name not in text, name
    urls = _third_party_urls(xml)
    assert len(urls) >= 8, urls
    assert [u for u in urls if CHILD_QUERY not in u] == []


def test_child_directed_content_withholds_the_identifiers_but_not_the_lat_setting() -> None:
    from vastserver.tracking import fill_server_macros, server_macros

    def withhold_device_macros(url: str, *, refused: bool) -> str:
        macros = server_macros(refused=refused, child_directed=not refused, gdpr=False)
        return fill_server_macros(url, macros)

    url = f"https://px.example/i?{DEVICE_QUERY}"
    assert withhold_device_macros(url, refused=False) == f"https://px.example/i?{CHILD_QUERY}"
    assert withhold_device_macros(url, refused=True) == f"https://px.example/i?{WITHHELD_QUERY}"


async def test_device_macros_are_withheld_on_child_directed_content(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """COPPA: no persistent identifier of a child to a third party (Google's child-directed
    treatment passes no device id either). ``kids=1`` (OpenRTB ``regs.coppa``) withheld
    nothing: a player filled the vendors' [IFA] in. Served in turn with the other variants:
    the fragment cache keeps them apart."""
    c.require_spec()
    client = await _device_client(make_client, tmp_path)
    base = "/vast?vast=4.2&series=tag-show&pod_duration=90&max_ads=3"
    n = iter(range(100))

    async def get(q: str) -> bytes:
        resp = await client.get(f"{base}&session=k{next(n)}&{q}")
        assert resp.status == 200, await resp.text()
        return bytes(await resp.read())

    for _ in range(2):
        kids = await get("kids=1")
        _assert_child_directed(kids)
        _assert_withheld(await get("kids=1&lmt=1"))  # a refusal besides: LAT is 1 too
        _assert_untouched(await get("kids=0"))
        _assert_withheld(await get("lmt=1"))
    assert c.validate_vast_xsd(kids, "4.2") == []
    lint_errors, lint_warnings = c.vastlint_report(kids)
    assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings
    for _ in range(2):
        _assert_child_directed(await _openrtb_pod(client, {"coppa": 1}, {}, {}))
        _assert_untouched(await _openrtb_pod(client, {"coppa": 0}, {}, {}))


# --------------------------------------------------------------------------------------------
# Regulation macros: [GDPR] and [REGULATIONS] filled in when the GDPR applies
# --------------------------------------------------------------------------------------------

REGULATION_QUERY = "gdpr=[GDPR]&regs=[REGULATIONS]&consent=[GDPRCONSENT]&ord=[CACHEBUSTING]"
"""The regulation macros a player fills in (and ``[GDPRCONSENT]``, which stays its own)."""
GDPR_QUERY = "gdpr=1&regs=gdpr&consent=[GDPRCONSENT]&ord=[CACHEBUSTING]"
""":data:`REGULATION_QUERY` served when the GDPR applies: VAST 4.1's ``[REGULATIONS]`` is a
list of the values ``coppa`` and ``gdpr``."""
COPPA_GDPR_QUERY = "gdpr=1&regs=coppa,gdpr&consent=[GDPRCONSENT]&ord=[CACHEBUSTING]"
""":data:`GDPR_QUERY` on child-directed content (``kids=1``, OpenRTB ``regs.coppa``)."""


def _assert_query(xml: bytes, query: str, least: int = 8) -> None:
    """Every third party's URL of ``xml`` carries ``query``, and no other of its values."""
    urls = _third_party_urls(xml)
    assert len(urls) >= least, urls
    assert [u for u in urls if query not in u] == []
    for other in {REGULATION_QUERY, GDPR_QUERY, COPPA_GDPR_QUERY} - {query}:
        assert other not in xml.decode()


def _regulation_imps(xml: bytes) -> list[str]:
    return [u for u in _all_imps(xml) if u.startswith("https://px.example/")]


def test_the_regulation_macros_are_filled_with_the_values_vast_gives() -> None:
    from vastserver.tracking import fill_server_macros, has_server_macros
    from vastserver.tracking import server_macros as values

    url = f"https://px.example/i?{REGULATION_QUERY}&g=${{GDPR}}&lmt=[LIMITADTRACKING]"
    filled = f"https://px.example/i?{GDPR_QUERY}"  # no device macro left to withhold
    device_only = values(refused=True, child_directed=False, gdpr=False)
    assert has_server_macros(url) and fill_server_macros(filled, device_only) == filled
    assert not has_server_macros("https://px.example/i?c=[GDPRCONSENT]&g=${GDPR}")
    gdpr = values(refused=False, child_directed=False, gdpr=True)
    assert fill_server_macros(url, gdpr) == (
        f"https://px.example/i?{GDPR_QUERY}&g=${{GDPR}}&lmt=[LIMITADTRACKING]"
    )
    kids = values(refused=False, child_directed=True, gdpr=True)
    assert fill_server_macros(url, kids) == (
        f"https://px.example/i?{COPPA_GDPR_QUERY}&g=${{GDPR}}&lmt=[LIMITADTRACKING]"
    )
    refused = values(refused=True, child_directed=False, gdpr=True)
    assert fill_server_macros(url, refused) == (
        f"https://px.example/i?{GDPR_QUERY}&g=${{GDPR}}&lmt=1"
    )
    # without the GDPR, nothing regulation-wise: the player's, as the device's own COPPA
    for r in (False, True):
        for k in (False, True):
            assert "[GDPR]&regs=[REGULATIONS]" in fill_server_macros(
                url, values(refused=r, child_directed=k, gdpr=False)
            )
    assert values(refused=False, child_directed=False, gdpr=False) == ()
    # the values are what a fragment is keyed on: equal outputs, one key
    assert values(refused=True, child_directed=True, gdpr=False) == values(
        refused=True, child_directed=False, gdpr=False
    )
    assert hash(kids) != hash(gdpr)


def test_a_creative_with_only_regulation_macros_is_filled_in() -> None:
    """Decided at load, as for the device macros: a creative whose URLs carry ``[GDPR]`` or
    ``[REGULATIONS]`` and no device macro is one the renderer fills in."""
    catalog = parse_catalog(device_doc(REGULATION_QUERY))
    assert all(cr.server_macros for cr in catalog.creatives.values())
    assert not parse_catalog(wrapper_doc()).creatives["cr-tp-30"].server_macros
    consent_only = parse_catalog(device_doc("consent=[GDPRCONSENT]"))
    assert not any(cr.server_macros for cr in consent_only.creatives.values())


@pytest.mark.parametrize("version", ("4.0", "4.1", "4.2", "4.3"))
async def test_gdpr_by_geo_fills_the_regulation_macros(
    make_client: ClientFactory, tmp_path: Path, version: str
) -> None:
    """``VASTSERVER_GDPR_BY_GEO``: a viewer in Germany who sent no GDPR signal has the GDPR
    applied by the server, which the player does not know of: left in, the player would
    fill ``[GDPR]`` with 0 and leave ``gdpr`` out of ``[REGULATIONS]``, against
    ``${GDPR}`` = 1 in the same URL. Every third party's URL gets ``[GDPR]`` = 1 and
    ``[REGULATIONS]`` = ``gdpr`` (``coppa,gdpr`` on child-directed content); ``[GDPRCONSENT]``
    stays the player's. The setting off, the US, ``gdpr=0``: left for the player. The
    documents still pass the XSD, vastlint and the player library."""
    c.require_spec()
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(device_doc(REGULATION_QUERY)))
    client: Any = await make_client(catalog=str(path), gdpr_by_geo="1")
    off: Any = await make_client(catalog=str(path))
    base = f"/vast?vast={version}&series=tag-show&pod_duration=90&max_ads=3"
    n = iter(range(100))

    async def get(cl: Any, q: str) -> bytes:
        resp = await cl.get(f"{base}&session=g{next(n)}&{q}")
        assert resp.status == 200, await resp.text()
        return bytes(await resp.read())

    de = await get(client, "country=DE")
    _assert_query(de, GDPR_QUERY)
    imps = _regulation_imps(de)
    assert imps and all(u.endswith("&g=1") for u in imps), imps  # as ${GDPR} says
    by_ip = await get(client, "device_ip=2001:db8::5")
    _assert_query(by_ip, GDPR_QUERY)
    kids = await get(client, "country=DE&kids=1")
    _assert_query(kids, COPPA_GDPR_QUERY)
    _assert_query(await get(client, "country=DE&debug=1"), GDPR_QUERY)  # the full template
    for cl, q in ((off, "country=DE"), (client, "country=US"), (client, "country=DE&gdpr=0")):
        xml = await get(cl, q)
        _assert_query(xml, REGULATION_QUERY)
        imps = _regulation_imps(xml)
        assert imps and not any(u.endswith("&g=1") for u in imps), (q, imps)
    for xml in (de, kids):
        assert c.validate_vast_xsd(xml, version) == []
        lint_errors, lint_warnings = c.vastlint_report(xml)
        assert lint_errors == [] and lint_warnings == [], lint_errors + lint_warnings
    if c.node_available():
        for result in c.node_parse_many([de.decode(), kids.decode()], "vast"):
            assert result["ok"], result["error"]


async def test_the_regulation_macros_follow_the_gdpr_as_resolved_fragment_by_fragment(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """The same creatives served in turn to viewers under the GDPR and not (Germany without
    a signal and the US, either way round; an explicit ``gdpr=1`` with consent, which
    refuses nothing, and no signal at all: only the GDPR tells their fragments apart; a TC
    string without a flag, which makes the GDPR apply) each carry their own values: the
    fragment cache never serves one viewer's filled macros to another. The player that
    said ``gdpr=1`` gets the values it would have filled in itself."""
    from tests.test_consent import tc_string

    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(device_doc(REGULATION_QUERY)))
    client: Any = await make_client(catalog=str(path), gdpr_by_geo="1")
    base = "/vast?vast=4.3&series=tag-show&pod_duration=90&max_ads=3"
    consent = tc_string({1, 2, 3, 4})
    turns = (
        ("country=DE", GDPR_QUERY),
        ("country=US", REGULATION_QUERY),
        ("country=DE", GDPR_QUERY),
        ("country=DE&kids=1", COPPA_GDPR_QUERY),
        ("country=US&kids=1", REGULATION_QUERY),
        (f"country=US&gdpr=1&gdpr_consent={consent}", GDPR_QUERY),
        ("", REGULATION_QUERY),
        (f"gdpr=1&gdpr_consent={consent}", GDPR_QUERY),
        (f"gdpr_consent={consent}", GDPR_QUERY),
        ("country=US&gdpr=1", GDPR_QUERY),
        ("country=US&lmt=1", REGULATION_QUERY),
    )
    n = iter(range(100))
    for _ in range(2):
        for q, want in (*turns, *reversed(turns)):
            resp = await client.get(f"{base}&session=f{next(n)}&{q}")
            assert resp.status == 200, await resp.text()
            xml = bytes(await resp.read())
            assert b'<Ad id="li-tp-cr-tp-30"' in xml, q  # every turn: the sponsorship
            _assert_query(xml, want)


async def test_the_regulation_macros_in_an_inline_vmap_and_openrtb(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """The GDPR applied by country fills them in an inline VMAP's pods and in an OpenRTB
    pod too; a US viewer's are left for the player."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(device_doc(REGULATION_QUERY)))
    client: Any = await make_client(catalog=str(path), gdpr_by_geo="1")
    base = "/vmap?inline=1&series=tag-show&content_duration=1200&preroll=1&midroll_interval=600"
    for country, want in (("DE", GDPR_QUERY), ("US", REGULATION_QUERY)):
        resp = await client.get(f"{base}&country={country}")
        assert resp.status == 200, await resp.text()
        xml = bytes(await resp.read())
        assert b"<vmap:VASTAdData>" in xml
        _assert_query(xml, want)
    _assert_query(await _openrtb_pod(client, {}, {}, {"geo": {"country": "DEU"}}), GDPR_QUERY)
    kids = await _openrtb_pod(client, {"coppa": 1}, {}, {"geo": {"country": "DEU"}})
    _assert_query(kids, COPPA_GDPR_QUERY)
    us = await _openrtb_pod(client, {}, {}, {"geo": {"country": "USA"}})
    _assert_query(us, REGULATION_QUERY)
    _assert_query(
        await _openrtb_pod(client, {"gdpr": 0}, {}, {"geo": {"country": "DEU"}}), REGULATION_QUERY
    )
