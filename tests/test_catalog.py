"""Catalog loading, validation, the demo fixture and the synthetic generator."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vastserver.catalog.gen import generate_catalog, main_gen_catalog
from vastserver.catalog.load import (
    CatalogError,
    CatalogIssue,
    decode_json,
    load_catalog,
    parse_catalog,
)
from vastserver.catalog.model import (
    KIDS_RATINGS,
    RATING_RANK,
    AdRules,
    BreakPosition,
    BreakRule,
    Catalog,
    Rule,
    Slot,
    Tier,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO_PATH = ROOT / "fixtures" / "demo-catalog.json"
DOCS_PATH = ROOT / "docs" / "catalog.md"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

Doc = dict[str, Any]


def demo_doc() -> Doc:
    data = json.loads(DEMO_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def errors_of(data: object) -> list[CatalogIssue]:
    with pytest.raises(CatalogError) as info:
        parse_catalog(data)
    assert info.value.errors, "CatalogError without issues"
    return info.value.errors


def has_issue(errors: list[CatalogIssue], path: str, fragment: str) -> bool:
    return any(e.path == path and fragment.lower() in e.message.lower() for e in errors)


def describe(errors: list[CatalogIssue]) -> str:
    return "\n".join(str(e) for e in errors)


def assert_exactly(errors: list[CatalogIssue], expected: list[tuple[str, str]]) -> None:
    """Each (path, message fragment) is reported, and nothing else."""
    for path, fragment in expected:
        assert has_issue(errors, path, fragment), f"{path}:\n{describe(errors)}"
    assert len(errors) == len(expected), describe(errors)


# --------------------------------------------------------------------------- demo catalog


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog(DEMO_PATH)


def test_demo_catalog_loads(demo: Catalog) -> None:
    assert re.fullmatch(r"demo-2026\.1\+[0-9a-f]{8}", demo.version)
    assert 6 <= len(demo.advertisers) <= 8
    assert len(demo.campaigns) == 8
    assert len(demo.line_items) == 14
    assert {li.tier for li in demo.line_items.values()} == set(Tier)
    # Everything serves today and for decades: tests that run the demo on the real clock and
    # `make serve` must not stop filling on a date (flights ran to 2028-12-31).
    for when in (NOW, datetime(2029, 6, 1, tzinfo=UTC), datetime(2099, 12, 31, 12, tzinfo=UTC)):
        for li in demo.line_items.values():
            camp = demo.campaigns[li.campaign_id]
            assert li.start <= when < li.end and camp.start <= when < camp.end
            assert li.status == camp.status == "active"


def test_demo_creatives(demo: Catalog) -> None:
    durations = {cr.duration_ms for cr in demo.creatives.values()}
    assert {6_000, 15_000, 20_000, 30_000, 60_000} <= durations
    for cr in demo.creatives.values():
        mp4 = [r for r in cr.renditions if r.mime == "video/mp4"]
        hls = [r for r in cr.renditions if r.mime.lower() == "application/x-mpegurl"]
        assert len(mp4) >= 3 and len(hls) == 1 and hls[0].delivery == "streaming"
        assert all(r.delivery == "progressive" for r in mp4)
        assert cr.mezzanine is not None
        urls = [r.url for r in cr.renditions] + [cr.mezzanine.url, cr.click_through or ""]
        assert all(u.startswith("https://") for u in urls)
        assert cr.universal_ad_id and cr.click_through
        adv = demo.advertisers[cr.advertiser_id]
        if "IAB8-5" in adv.categories:  # beer needs mature content
            assert cr.rating == "TV-14"
    assert sum(len(cr.verifications) for cr in demo.creatives.values()) >= 1
    assert any(i.program == "AdChoices" for cr in demo.creatives.values() for i in cr.icons)
    beer = [a for a in demo.advertisers.values() if a.competitive_category == "beer"]
    assert len(beer) == 2


def test_demo_ad_rules(demo: Catalog) -> None:
    default = demo.rules_for(None)
    assert default.pre == BreakRule(30, 2)
    assert default.mid == BreakRule(120, 4)
    assert default.post == BreakRule(60, 2)
    assert default.midroll_interval_s == 600
    named = [name for name in demo.ad_rules if name != "default"]
    assert named
    assert demo.rules_for("no-such-placement") is default
    kids = demo.rules_for(named[0])
    assert kids.post == default.post  # inherited


def test_demo_sponsorship(demo: Catalog) -> None:
    sponsors = [li for li in demo.line_items.values() if li.tier is Tier.SPONSORSHIP]
    assert len(sponsors) == 1
    s = sponsors[0]
    assert s.positions == frozenset({BreakPosition.PRE}) and s.slot is Slot.FIRST
    assert "series" in s.targeting.rules and s.pricing_model == "flat"


def test_demo_broad_fill_for_plain_ctv_request(demo: Catalog) -> None:
    """A request with only device_type=ctv (content rated TV-PG by default) finds several
    line items from different competitive categories that fit a 120 s mid-roll."""
    fits: dict[str | None, list[str]] = {}
    for li in demo.line_items.values():
        if BreakPosition.MID not in li.positions or li.targeting.dayparts:
            continue
        t = li.targeting
        if any(
            not rule.allows_any(("ctv",) if dim == "device_type" else ())
            for dim, rule in t.rules.items()
        ):
            continue
        if any(not rule.allows(None) for rule in t.key_values.values()):
            continue
        creatives = [demo.creatives[c] for c in li.creative_ids]
        if not any(RATING_RANK[c.rating] <= RATING_RANK["TV-PG"] for c in creatives):
            continue
        adv = demo.advertisers[demo.campaigns[li.campaign_id].advertiser_id]
        fits.setdefault(adv.competitive_category, []).append(li.id)
    assert len(fits) >= 4, fits


def test_demo_kids_line_item_has_kids_safe_creatives(demo: Catalog) -> None:
    for li in demo.line_items.values():
        genre = li.targeting.rules.get("genre")
        if genre is not None and "kids" in genre.include:
            for cid in li.creative_ids:
                assert demo.creatives[cid].rating in KIDS_RATINGS


# --------------------------------------------------------------------------- immutability


def test_catalog_is_read_only(demo: Catalog) -> None:
    li = next(li for li in demo.line_items.values() if li.targeting.rules)
    mappings: list[Any] = [
        demo.advertisers,
        demo.campaigns,
        demo.line_items,
        demo.creatives,
        demo.ad_rules,
        li.targeting.rules,
        li.targeting.key_values,
    ]
    for m in mappings:
        with pytest.raises(TypeError):
            m["x"] = None
    assert isinstance(demo.blocked_domains, frozenset)
    assert isinstance(demo.blocked_categories, frozenset)
    assert isinstance(li.creative_ids, tuple) and isinstance(li.positions, frozenset)
    rule = next(iter(li.targeting.rules.values()))
    assert isinstance(rule.include, frozenset) and isinstance(rule.exclude, frozenset)
    for cr in demo.creatives.values():
        assert isinstance(cr.renditions, tuple) and isinstance(cr.verifications, tuple)
        assert isinstance(cr.categories, tuple) and isinstance(cr.icons, tuple)
    with pytest.raises(AttributeError):
        li.price = 1.0  # type: ignore[misc]


def test_version_hash_tracks_content_not_formatting(tmp_path: Path) -> None:
    doc = demo_doc()
    a = parse_catalog(doc).version
    pretty = tmp_path / "a.json"
    pretty.write_text(json.dumps(doc, indent=4), encoding="utf-8")
    compact = tmp_path / "b.json"
    compact.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
    assert load_catalog(pretty).version == load_catalog(compact).version == a
    doc["line_items"][0]["price"] = 25001
    b = parse_catalog(doc).version
    assert b != a and b.split("+")[0] == a.split("+")[0]


@pytest.mark.parametrize(
    "doc",
    [
        demo_doc(),
        {},
        {"line_items": [], "z": {"b": [1, {"é": "x\u2028", "a": 1.5e300}], "a": None}},
        {"creatives": [{"id": "c", "n": [[1, 2], {"k": True}]}], "advertisers": "x"},
    ],
)
def test_the_version_hash_is_the_canonical_documents_in_pieces(doc: object) -> None:
    """Hashed piece by piece (one dumps of a 100k catalog held the interpreter 2.7 s
    beside the serving loop), the version is still the SHA-256 of the one canonical
    document: the same catalogs keep the same versions across the upgrade."""
    from vastserver.catalog.load import _content_hash

    whole = json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert _content_hash(doc) == hashlib.sha256(whole.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------- error classes

Mutation = Callable[[Doc], None]


def _set(path: str, value: Any) -> Mutation:
    """Set the value at a dotted path like ``line_items.0.price``."""

    def apply(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def _del(path: str) -> Mutation:
    def apply(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        del node[last]

    return apply


def _ms(value: int) -> Mutation:
    """Replace the first creative's ``duration`` by ``duration_ms``."""

    def apply(doc: Doc) -> None:
        doc["creatives"][0].pop("duration")
        doc["creatives"][0]["duration_ms"] = value

    return apply


def _dup_first(collection: str) -> Mutation:
    def apply(doc: Doc) -> None:
        doc[collection].append(copy.deepcopy(doc[collection][0]))

    return apply


def _index_of(collection: str, ident: str) -> int:
    return next(i for i, x in enumerate(demo_doc()[collection]) if x["id"] == ident)


N_LI = len(demo_doc()["line_items"])
N_CR = len(demo_doc()["creatives"])
N_ADV = len(demo_doc()["advertisers"])
N_CMP = len(demo_doc()["campaigns"])
LI_CTV = _index_of("line_items", "li-northstar-winter-ctv")  # device_type targeting
LI_PRIME = _index_of("line_items", "li-northstar-ev-prime")  # has a daypart
LI_BLUEFIN = _index_of("line_items", "li-bluefin-5g-ctv")
LI_HOUSE = _index_of("line_items", "li-house-promo")
LI_SPONSOR = _index_of("line_items", "li-streamly-galaxy-sponsor")  # flat
CR_VERIFIED = _index_of("creatives", "cr-ridgeway-gameday-30")  # has an OMID verification
VERIF = f"creatives.{CR_VERIFIED}.verifications.0"
VERIF_PATH = f"$.creatives[{CR_VERIFIED}].verifications[0]"
VERIF_PARAMS = f"creatives.{CR_VERIFIED}.verifications.0.parameters"
VERIF_PARAMS_PATH = f"$.creatives[{CR_VERIFIED}].verifications[0].parameters"

ERROR_CASES: list[tuple[str, Mutation, str, str]] = [
    # wrong / missing types
    ("price type", _set("line_items.0.price", "10"), "$.line_items[0].price", "expected a number"),
    ("bool is no int", _set("creatives.0.renditions.0.width", True),
     "$.creatives[0].renditions[0].width", "expected an integer"),
    ("missing title", _del("creatives.0.title"), "$.creatives[0].title", "missing"),
    # a verification's script needs its parameters (vastlint warns without them)
    ("verification without parameters", _del(VERIF_PARAMS), VERIF_PARAMS_PATH, "missing"),
    ("verification parameters null", _set(VERIF_PARAMS, None), VERIF_PARAMS_PATH, "got null"),
    ("verification parameters blank", _set(VERIF_PARAMS, " "), VERIF_PARAMS_PATH, "not be empty"),
    # ... and the other forms vastlint warns on: a vendor not as domain-useCase, a framework
    # other than (lowercase) omid, a script over http
    ("verification vendor form", _set(f"{VERIF}.vendor", "acme"), f"{VERIF_PATH}.vendor",
     "domain-useCase"),
    ("verification vendor no use case", _set(f"{VERIF}.vendor", "acme.com-"),
     f"{VERIF_PATH}.vendor", "domain-useCase"),
    ("verification framework", _set(f"{VERIF}.api_framework", "OMID"),
     f"{VERIF_PATH}.api_framework", "is not one of"),
    ("verification script http", _set(f"{VERIF}.js_url", "http://verify.example.com/o.js"),
     f"{VERIF_PATH}.js_url", "must be https"),
    # verificationNotExecuted tracking: https, with the [REASON] it exists to report
    ("not executed no reason", _set(f"{VERIF}.not_executed_urls", ["https://v.example/ne"]),
     f"{VERIF_PATH}.not_executed_urls[0]", "must carry the [REASON] macro"),
    ("not executed http", _set(f"{VERIF}.not_executed_urls", ["http://v.example/ne?r=[REASON]"]),
     f"{VERIF_PATH}.not_executed_urls[0]", "must be https"),
    ("browser optional", _set(f"{VERIF}.browser_optional", "yes"),
     f"{VERIF_PATH}.browser_optional", "expected true or false"),
    # a creative's api_framework: VPAID is what the server acts on, nothing else is taken
    ("creative framework", _set("creatives.0.api_framework", "MRAID"),
     "$.creatives[0].api_framework", 'is not one of "VPAID"'),
    ("creative framework case", _set("creatives.0.api_framework", "vpaid"),
     "$.creatives[0].api_framework", 'is not one of "VPAID"'),
    # URLs vastlint would warn on: a character no URI holds unencoded, an unknown macro
    ("url brace", _set("creatives.0.click_through", "https://a.example/c?g=${GDPR}"),
     "$.creatives[0].click_through", "percent-encode it (%7B)"),
    ("url unknown macro", _set("creatives.0.click_through", "https://a.example/c?s=[STOREID]"),
     "$.creatives[0].click_through", "[STOREID] is no IAB VAST macro"),
    ("missing tier", _del("line_items.0.tier"), "$.line_items[0].tier", "missing"),
    ("advertisers not array", _set("advertisers", {}), "$.advertisers", "expected an array"),
    ("null not allowed", _set("campaigns.0.name", None), "$.campaigns[0].name", "got null"),
    ("missing version", _del("version"), "$.version", "missing"),
    ("bad version", _set("version", "demo 1+x"), "$.version", "is not"),
    # unknown fields
    ("unknown field", _set("line_items.0.tierr", "standard"), "$.line_items[0].tierr",
     "did you mean 'tier'"),
    ("unknown top-level", _set("lineitems", []), "$.lineitems", "unknown field"),
    ("unknown dimension", _set(f"line_items.{LI_CTV}.targeting.genres", {"include": ["x"]}),
     f"$.line_items[{LI_CTV}].targeting.genres", "did you mean 'genre'"),
    ("comment not string", _set("campaigns.0._comment", 5), "$.campaigns[0]._comment",
     "expected a string"),
    # enums
    ("tier", _set("line_items.0.tier", "premium"), "$.line_items[0].tier", "is not one of"),
    ("rating", _set("creatives.0.rating", "R"), "$.creatives[0].rating", "is not one of"),
    ("device type", _set(f"line_items.{LI_CTV}.targeting.device_type.include", ["ctv", "tv"]),
     f"$.line_items[{LI_CTV}].targeting.device_type.include[1]", "is not one of"),
    ("platform", _set(f"line_items.{LI_CTV}.targeting.platform", {"include": ["xbox"]}),
     f"$.line_items[{LI_CTV}].targeting.platform.include[0]", "is not one of"),
    ("targeting rating", _set(f"line_items.{LI_CTV}.targeting.rating", {"exclude": ["PG-13"]}),
     f"$.line_items[{LI_CTV}].targeting.rating.exclude[0]", "is not one of"),
    ("country", _set(f"line_items.{LI_CTV}.targeting.country", {"include": ["usa"]}),
     f"$.line_items[{LI_CTV}].targeting.country.include[0]", "country code"),
    ("status", _set("campaigns.0.status", "running"), "$.campaigns[0].status", "is not one of"),
    ("li status", _set("line_items.0.status", "live"), "$.line_items[0].status", "is not one of"),
    ("pacing delivery", _set(f"line_items.{LI_CTV}.pacing.delivery", "fast"),
     f"$.line_items[{LI_CTV}].pacing.delivery", "is not one of"),
    ("rendition delivery", _set("creatives.0.renditions.0.delivery", "download"),
     "$.creatives[0].renditions[0].delivery", "is not one of"),
    ("slot", _set("line_items.0.slot", "middle"), "$.line_items[0].slot", "is not one of"),
    ("positions", _set("line_items.0.positions", ["pre", "preroll"]),
     "$.line_items[0].positions[1]", "is not one of"),
    ("empty positions", _set("line_items.0.positions", []), "$.line_items[0].positions",
     "must not be empty"),
    ("break dimension", _set(f"line_items.{LI_CTV}.targeting.break", {"include": ["middle"]}),
     f"$.line_items[{LI_CTV}].targeting.break.include[0]", "is not one of"),
    ("cap window", _set(f"line_items.{LI_CTV}.frequency_caps.0.window", "2x"),
     f"$.line_items[{LI_CTV}].frequency_caps[0].window", "window like"),
    ("cap window zero", _set(f"line_items.{LI_CTV}.frequency_caps.0.window", "0d"),
     f"$.line_items[{LI_CTV}].frequency_caps[0].window", "window like"),
    ("cap window word", _set(f"line_items.{LI_CTV}.frequency_caps.0.window", "forever"),
     f"$.line_items[{LI_CTV}].frequency_caps[0].window", "window like"),
    ("cap scope", _set(f"line_items.{LI_CTV}.frequency_caps.0.scope", "viewer"),
     f"$.line_items[{LI_CTV}].frequency_caps[0].scope", "is not one of"),
    ("cap max", _set(f"line_items.{LI_CTV}.frequency_caps.0.max", 0),
     f"$.line_items[{LI_CTV}].frequency_caps[0].max", "out of range"),
    ("pricing model", _set("line_items.0.pricing_model", "CPC"), "$.line_items[0].pricing_model",
     "is not one of"),
    # duplicate ids
    ("dup advertiser", _dup_first("advertisers"), f"$.advertisers[{N_ADV}].id", "duplicate"),
    ("dup campaign", _dup_first("campaigns"), f"$.campaigns[{N_CMP}].id", "duplicate"),
    ("dup creative", _dup_first("creatives"), f"$.creatives[{N_CR}].id", "duplicate"),
    ("dup line item", _dup_first("line_items"), f"$.line_items[{N_LI}].id", "duplicate"),
    ("dup creative ref", _set("line_items.0.creative_ids", ["cr-streamly-bumper-6"] * 2),
     "$.line_items[0].creative_ids[1]", "duplicate"),
    ("registry with a space", _set("creatives.0.universal_ad_id_registry", "AD ID"),
     "$.creatives[0].universal_ad_id_registry", "is not a registry name or domain"),
    ("registry with a slash",
     _set("creatives.0.universal_ad_ids", [{"registry": "a/b", "value": "X1"}]),
     "$.creatives[0].universal_ad_ids[0].registry", "is not a registry name or domain"),
    # a host IDNA cannot encode (a 64-character label, an empty one): the loader raised
    ("unencodable host",
     _set("creatives.0.renditions.0.url", "https://" + "\u00e4" * 64 + ".example/a.mp4"),
     "$.creatives[0].renditions[0].url", "has a host that cannot be encoded"),
    ("unencodable click host", _set("creatives.0.click_through", "https://cdn\u00e4..example/a"),
     "$.creatives[0].click_through", "has a host that cannot be encoded"),
    # dangling references
    ("li campaign", _set("line_items.0.campaign_id", "cmp-nope"), "$.line_items[0].campaign_id",
     "unknown campaign"),
    ("li creative", _set(f"line_items.{LI_BLUEFIN}.creative_ids.1", "cr-nope"),
     f"$.line_items[{LI_BLUEFIN}].creative_ids[1]", "unknown creative"),
    ("campaign advertiser", _set("campaigns.0.advertiser_id", "adv-nope"),
     "$.campaigns[0].advertiser_id", "unknown advertiser"),
    ("creative advertiser", _set("creatives.0.advertiser_id", "adv-nope"),
     "$.creatives[0].advertiser_id", "unknown advertiser"),
    ("foreign creative", _set(f"line_items.{LI_HOUSE}.creative_ids.1", "cr-bluefin-5g-30"),
     f"$.line_items[{LI_HOUSE}].creative_ids[1]", "belongs to advertiser 'adv-bluefin'"),
    # time
    ("campaign end<start", _set("campaigns.0.end", "2025-12-31T00:00:00Z"), "$.campaigns[0].end",
     "after start"),
    ("li end<start",
     lambda d: d["line_items"][0].update(start="2027-01-01T00:00:00Z", end="2026-06-01T00:00:00Z"),
     "$.line_items[0].end", "after start"),
    ("li end before campaign start", _set("line_items.0.end", "2025-06-01T00:00:00Z"),
     "$.line_items[0].end", "end must be after start"),
    ("li outside campaign", _set("line_items.0.end", "2100-01-01T00:00:00Z"),
     "$.line_items[0].end", "ends after its campaign"),
    ("li before campaign", _set("line_items.0.start", "2025-01-01T00:00:00Z"),
     "$.line_items[0].start", "starts before its campaign"),
    ("naive time", _set("campaigns.0.start", "2026-01-01T00:00:00"), "$.campaigns[0].start",
     "utc offset"),
    ("not a time", _set("campaigns.0.start", "next tuesday"), "$.campaigns[0].start",
     "not an ISO 8601"),
    ("daypart hours",
     lambda d: d["line_items"][LI_PRIME]["targeting"]["dayparts"][0].update(
         start_hour=22, end_hour=6),
     f"$.line_items[{LI_PRIME}].targeting.dayparts[0].end_hour", "after start_hour"),
    ("daypart day", _set(f"line_items.{LI_PRIME}.targeting.dayparts.0.days", [0, 7]),
     f"$.line_items[{LI_PRIME}].targeting.dayparts[0].days[1]", "out of range"),
    # numbers
    ("negative price", _set("line_items.0.price", -1), "$.line_items[0].price", ">= 0"),
    ("negative duration", _set("creatives.0.duration", -15), "$.creatives[0].duration", ">= 1"),
    ("zero duration", _set("creatives.0.duration", 0), "$.creatives[0].duration", ">= 1"),
    # under 1 s: players and vastlint read "00:00:00.500" as an ad of no length
    ("half a second", _set("creatives.0.duration", 0.5), "$.creatives[0].duration", ">= 1"),
    ("999 ms", _set("creatives.0.duration_ms", 999), "$.creatives[0].duration_ms", "[1000,"),
    ("nan duration", _set("creatives.0.duration", float("nan")), "$.creatives[0].duration",
     "finite"),
    ("negative duration_ms", _ms(-5),
     "$.creatives[0].duration_ms", "out of range"),
    ("both durations", _set("creatives.0.duration_ms", 15000), "$.creatives[0].duration_ms",
     "not both"),
    ("no duration", _del("creatives.0.duration"), "$.creatives[0].duration", "missing"),
    ("skip too late", _set("creatives.1.skip_offset", 60), "$.creatives[1].skip_offset",
     "shorter than"),
    ("negative budget", _set("campaigns.0.budget.impressions", -5),
     "$.campaigns[0].budget.impressions", "out of range"),
    ("negative width", _set("creatives.0.renditions.0.width", -640),
     "$.creatives[0].renditions[0].width", "out of range"),
    # creatives and URLs
    ("no renditions", _set("creatives.0.renditions", []), "$.creatives[0].renditions",
     "must not be empty"),
    ("ftp url", _set("creatives.0.renditions.0.url", "ftp://cdn.example.com/a.mp4"),
     "$.creatives[0].renditions[0].url", "http or https"),
    ("javascript url", _set("creatives.0.click_through", "javascript:alert(1)"),
     "$.creatives[0].click_through", "http or https"),
    ("relative url", _set("creatives.0.mezzanine.url", "/mezz/a.mov"),
     "$.creatives[0].mezzanine.url", "http or https"),
    ("url with space", _set("creatives.0.renditions.1.url", "https://cdn.example.com/a b.mp4"),
     "$.creatives[0].renditions[1].url", "whitespace"),
    ("bad port", _set("creatives.0.renditions.1.url", "https://cdn.example.com:99999/a.mp4"),
     "$.creatives[0].renditions[1].url", "not a valid URL"),
    ("bad mime", _set("creatives.0.renditions.0.mime", "mp4"), "$.creatives[0].renditions[0].mime",
     "MIME type"),
    ("bad domain", _set("advertisers.0.domain", "https://northstar.example/"),
     "$.advertisers[0].domain", "domain name"),
    ("bad category", _set("advertisers.0.categories", ["IAB8-5", "beer"]),
     "$.advertisers[0].categories[1]", "IAB category"),
    # time zones
    ("campaign tz", _set("campaigns.0.timezone", "America/New_Yrok"), "$.campaigns[0].timezone",
     "did you mean 'America/New_York'"),
    ("daypart tz", _set(f"line_items.{LI_PRIME}.targeting.dayparts.0.timezone", "Mars/Olympus"),
     f"$.line_items[{LI_PRIME}].targeting.dayparts[0].timezone", "unknown time zone"),
    # targeting rules
    ("overlap", _set(f"line_items.{LI_BLUEFIN}.targeting.genre",
                     {"include": ["kids"], "exclude": ["kids"]}),
     f"$.line_items[{LI_BLUEFIN}].targeting.genre.exclude", "both included and excluded"),
    ("empty rule", _set(f"line_items.{LI_BLUEFIN}.targeting.genre", {}),
     f"$.line_items[{LI_BLUEFIN}].targeting.genre", "no values"),
    ("rule as list", _set(f"line_items.{LI_BLUEFIN}.targeting.genre", ["kids"]),
     f"$.line_items[{LI_BLUEFIN}].targeting.genre", "expected genre rule object"),
    ("kv key",
     _set(f"line_items.{LI_BLUEFIN}.targeting.key_values", {"bad key": {"include": ["x"]}}),
     f'$.line_items[{LI_BLUEFIN}].targeting.key_values["bad key"]', "key name"),
    ("kv value", _set(f"line_items.{LI_BLUEFIN}.targeting.key_values", {"show": {"include": [1]}}),
     f"$.line_items[{LI_BLUEFIN}].targeting.key_values.show.include[0]", "expected a string"),
    # ad rules and blocklist
    ("break duration", _set("ad_rules.default.mid.duration", -30),
     "$.ad_rules.default.mid.duration", "out of range"),
    ("break field", _set("ad_rules.default.mid.length", 30), "$.ad_rules.default.mid.length",
     "unknown field"),
    ("placement name", _set("ad_rules.bad name", {}), '$.ad_rules["bad name"]', "placement name"),
    ("blocklist category", _set("blocklist.categories", ["IAB25", "alcohol"]),
     "$.blocklist.categories[1]", "IAB category"),
]  # fmt: skip


def test_flat_line_item_rules_report_every_breach() -> None:
    """A flat fee does not grow with impressions: no slot prices, no spend budget of its
    own; and value_cpm belongs to flat line items only. All three at once are reported."""
    doc = demo_doc()
    sponsor = doc["line_items"][LI_SPONSOR]
    sponsor["slot_prices"] = {"first": 80.0}
    sponsor["pacing"] = {"budget": {"spend": 1000.0, "daily_spend": 50.0}}
    doc["line_items"][LI_CTV]["value_cpm"] = 30.0
    errors = errors_of(doc)
    p, c = f"$.line_items[{LI_SPONSOR}]", f"$.line_items[{LI_CTV}]"
    expected = [
        (f"{p}.slot_prices", "not a price per slot"),
        (f"{p}.pacing.budget.spend", "spends nothing per impression"),
        (f"{p}.pacing.budget.daily_spend", "spends nothing per impression"),
        (f"{c}.value_cpm", "for flat-priced line items"),
    ]
    assert_exactly(errors, expected)


def test_a_catalog_has_one_currency() -> None:
    """Prices are ranked against each other and budgets add them up: line items price in
    the catalog's currency (top-level, USD by default), a line item that gives none takes
    it, and one that gives another is an error (each reported): a typo cannot turn the
    catalog's currency."""
    assert parse_catalog(demo_doc()).currency == "USD"
    doc = demo_doc()
    doc["line_items"][LI_CTV]["currency"] = "EUR"
    doc["line_items"][LI_PRIME]["currency"] = "GBP"
    assert_exactly(
        errors_of(doc),
        [
            (f"$.line_items[{LI_CTV}].currency", "EUR differs from the catalog's currency USD"),
            (f"$.line_items[{LI_PRIME}].currency", "GBP differs from the catalog's currency USD"),
        ],
    )
    doc["currency"] = "EUR"
    assert_exactly(
        errors_of(doc),
        [(f"$.line_items[{LI_PRIME}].currency", "GBP differs from the catalog's currency EUR")],
    )
    # an invalid catalog currency is reported alone, not again on every line item
    doc["currency"] = "Eur"
    assert [i.path for i in errors_of(doc)] == ["$.currency"]
    doc["currency"] = "EUR"
    del doc["line_items"][LI_PRIME]["currency"]
    eur = parse_catalog(doc)
    assert eur.currency == "EUR"
    assert {li.currency for li in eur.line_items.values()} == {"EUR"}


def test_ranking_cpm_of_flat_line_items() -> None:
    """A flat line item competes at its value_cpm; else at its fee over its lifetime
    impression budget; else at its fee read as a CPM. A CPM line item at its price."""
    doc = demo_doc()
    sponsor = doc["line_items"][LI_SPONSOR]
    assert sponsor["price"] == 25000 and "pacing" not in sponsor
    plain = parse_catalog(copy.deepcopy(doc)).line_items[sponsor["id"]]
    assert plain.rank_cpm == 25000
    sponsor["pacing"] = {"budget": {"impressions": 500_000, "daily_impressions": 20_000}}
    goal = parse_catalog(copy.deepcopy(doc)).line_items[sponsor["id"]]
    assert goal.rank_cpm == pytest.approx(50.0)  # 25,000 / 500k x 1,000
    sponsor["value_cpm"] = 72.5
    valued = parse_catalog(copy.deepcopy(doc)).line_items[sponsor["id"]]
    assert valued.rank_cpm == 72.5 and valued.value_cpm == 72.5
    ctv = parse_catalog(doc).line_items[doc["line_items"][LI_CTV]["id"]]
    assert ctv.pricing_model == "CPM" and ctv.rank_cpm == ctv.price


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [pytest.param(m, p, f, id=name) for name, m, p, f in ERROR_CASES],
)
def test_error_is_reported_with_path(mutate: Mutation, path: str, fragment: str) -> None:
    doc = demo_doc()
    mutate(doc)
    errors = errors_of(doc)
    assert has_issue(errors, path, fragment), describe(errors)


def test_all_errors_in_one_document_are_reported() -> None:
    doc = demo_doc()
    picks = [ERROR_CASES[i] for i in range(0, len(ERROR_CASES), 7)]
    # Mutations touching the same node could mask each other; these are spread out.
    applied = []
    touched: set[str] = set()
    for name, mutate, path, fragment in picks:
        node = re.sub(r"\.(id|end|start|timezone)$", "", path)
        if any(node.startswith(t) or t.startswith(node) for t in touched):
            continue
        touched.add(node)
        mutate(doc)
        applied.append((name, path, fragment))
    assert len(applied) >= 6
    errors = errors_of(doc)
    for name, path, fragment in applied:
        assert has_issue(errors, path, fragment), f"{name}:\n{describe(errors)}"


@pytest.mark.parametrize(
    ("section", "value", "got"),
    [
        ("advertisers", {}, "object"),
        ("campaigns", "cmp-a", 'string "cmp-a"'),
        ("creatives", 5, "integer 5"),
    ],
)
def test_a_section_of_the_wrong_type_is_reported_once(
    section: str, value: object, got: str
) -> None:
    """An ``advertisers`` object instead of an array was reported, and then every campaign
    and creative "refers to unknown advertiser": 23 issues for one mistake. References to a
    section that is no array are not judged (the section's own issue says what is wrong);
    a missing entry of an array still is."""
    doc = demo_doc()
    doc[section] = value
    errors = errors_of(doc)
    assert [(e.path, e.message) for e in errors] == [
        (f"$.{section}", f"expected an array, got {got}")
    ]
    doc = demo_doc()
    doc[section] = [e for e in doc[section] if e["id"] != doc[section][0]["id"]]
    assert any("refers to unknown" in e.message for e in errors_of(doc))


def test_every_error_of_a_verification_is_reported() -> None:
    doc = demo_doc()
    verification = doc["creatives"][CR_VERIFIED]["verifications"][0]
    verification.update(
        browser_optional=1,
        not_executed_urls=[
            "https://v.example/ne?r=[REASON]",
            "https://v.example/ne",
            "http://v.example/ne?r=[REASON]",
            "https://v.example/ne?r=[REASON]&s=[STOREID]",
        ],
    )
    p = VERIF_PATH
    assert_exactly(
        errors_of(doc),
        [
            (f"{p}.browser_optional", "expected true or false"),
            (f"{p}.not_executed_urls[1]", "must carry the [REASON] macro"),
            (f"{p}.not_executed_urls[2]", "must be https"),
            (f"{p}.not_executed_urls[3]", "[STOREID] is no IAB VAST macro"),
        ],
    )


def test_verification_fields_load() -> None:
    doc = demo_doc()
    verification = doc["creatives"][CR_VERIFIED]["verifications"][0]
    cr_id = doc["creatives"][CR_VERIFIED]["id"]
    (plain,) = parse_catalog(doc).creatives[cr_id].verifications
    assert (plain.browser_optional, plain.not_executed_urls) == (False, ())
    url = "https://v.example/ne?r=[REASON]&cb=[CACHEBUSTING]"
    verification.update(browser_optional=True, not_executed_urls=[url])
    (v,) = parse_catalog(doc).creatives[cr_id].verifications
    assert (v.browser_optional, v.not_executed_urls) == (True, (url,))


def test_many_errors_in_one_line_item() -> None:
    doc = demo_doc()
    li = doc["line_items"][LI_CTV]
    li.update(tier="gold", price=-3, slot=7, colour="red", creative_ids=["cr-nope", 5])
    li["targeting"]["device_type"] = {"include": ["toaster"]}
    li["frequency_caps"][0]["window"] = "3y"
    del li["name"]
    errors = errors_of(doc)
    p = f"$.line_items[{LI_CTV}]"
    expected = [
        (f"{p}.tier", "is not one of"),
        (f"{p}.price", ">= 0"),
        (f"{p}.slot", "expected one of"),
        (f"{p}.colour", "unknown field"),
        (f"{p}.creative_ids[0]", "unknown creative"),
        (f"{p}.creative_ids[1]", "expected a string"),
        (f"{p}.targeting.device_type.include[0]", "is not one of"),
        (f"{p}.frequency_caps[0].window", "window like"),
        (f"{p}.name", "missing"),
    ]
    assert_exactly(errors, expected)


def test_competitive_labels_of_line_items_and_creatives() -> None:
    """Line items and creatives may carry competitive labels (slugs, each once); an ad's
    labels are those and its advertiser's category."""
    doc = demo_doc()
    li, cr = doc["line_items"][0], doc["creatives"][0]
    li["competitive_categories"] = ["beer", "fast_food"]
    cr["competitive_categories"] = []
    cat = parse_catalog(doc)
    assert cat.line_items[li["id"]].competitive_categories == ("beer", "fast_food")
    assert cat.creatives[cr["id"]].competitive_categories == ()
    assert cat.line_items[doc["line_items"][1]["id"]].competitive_categories == ()


def test_competitive_label_errors_name_the_entity() -> None:
    """A malformed slug, a non-array and a duplicate are each reported, all of them at once,
    with the entity's id."""
    doc = demo_doc()
    li0, li1, cr0 = doc["line_items"][0], doc["line_items"][1], doc["creatives"][0]
    li0["competitive_categories"] = ["beer", "Fast Food"]
    li1["competitive_categories"] = "beer"
    cr0["competitive_categories"] = ["wine", "wine"]
    errors = errors_of(doc)
    assert_exactly(
        errors,
        [
            ("$.line_items[0].competitive_categories[1]", "lowercase slug"),
            ("$.line_items[1].competitive_categories", "an array"),
            ("$.creatives[0].competitive_categories[1]", "duplicate value"),
        ],
    )
    by_path = {e.path: e for e in errors}
    assert by_path["$.line_items[0].competitive_categories[1]"].id == li0["id"]
    assert by_path["$.line_items[1].competitive_categories"].id == li1["id"]
    assert by_path["$.creatives[0].competitive_categories[1]"].id == cr0["id"]
    assert f'line item "{li0["id"]}"' in str(by_path["$.line_items[0].competitive_categories[1]"])


def test_creative_attributes_are_declared_and_derived() -> None:
    """A creative's AdCOM attributes are those it declares plus 13 (user interactive) for
    SIMID files or VPAID, ascending; a skip offset adds no 16 (the player's skip button is
    not the ad's)."""
    doc = demo_doc()
    declared, simid, vpaid, skippable = doc["creatives"][:4]
    declared["attributes"] = [16, 9]
    simid["interactive"] = [{"url": "https://simid.example/a.html", "api_framework": "SIMID"}]
    simid["attributes"] = [13, 1]  # declared and derived: once
    vpaid["api_framework"] = "VPAID"
    skippable["skip_offset"] = 5
    cat = parse_catalog(doc)
    got = {cr["id"]: cat.creatives[cr["id"]].attributes for cr in doc["creatives"][:4]}
    assert got == {
        declared["id"]: (9, 16),
        simid["id"]: (1, 13),
        vpaid["id"]: (13,),
        skippable["id"]: (),
    }
    assert all(not cr.attributes for cr in list(cat.creatives.values())[4:])


def test_bad_creative_attributes_are_each_reported_at_their_path() -> None:
    """Not an array, not an integer, 0, beyond AdCOM's 17, twice: every one reported, all at
    once, with the creative's id."""
    doc = demo_doc()
    doc["creatives"][0]["attributes"] = 13
    doc["creatives"][1]["attributes"] = [9, "13", 0, 18, 2.5, True, 9]
    doc["creatives"][2]["attributes"] = None
    errors = errors_of(doc)
    assert_exactly(
        errors,
        [
            ("$.creatives[0].attributes", "expected an array"),
            ("$.creatives[1].attributes[1]", "expected an integer"),
            ("$.creatives[1].attributes[2]", "out of range [1, 17]"),
            ("$.creatives[1].attributes[3]", "out of range [1, 17]"),
            ("$.creatives[1].attributes[4]", "expected an integer"),
            ("$.creatives[1].attributes[5]", "expected an integer"),
            ("$.creatives[1].attributes[6]", "duplicate value 9"),
            ("$.creatives[2].attributes", "expected an array"),
        ],
    )
    by_path = {e.path: e for e in errors}
    assert by_path["$.creatives[1].attributes[3]"].id == doc["creatives"][1]["id"]


def test_error_message_lists_issues() -> None:
    doc = demo_doc()
    doc["line_items"][0]["tier"] = "premium"
    with pytest.raises(CatalogError) as info:
        parse_catalog(doc, source="demo.json")
    text = str(info.value)
    assert text.startswith("1 error in catalog demo.json:")
    assert "$.line_items[0].tier" in text


def test_strings_xml_cannot_carry_are_errors() -> None:
    """Every catalog string may end up in a VAST document: control characters, lone
    surrogates and U+FFFF are refused (they broke the XML, or its UTF-8 encoding)."""
    doc = demo_doc()
    doc["creatives"][0]["title"] = "bad\u0000title"
    doc["creatives"][1]["title"] = "esc\u001b[31m"
    doc["creatives"][2]["title"] = "half a pair \ud800"
    doc["creatives"][3]["title"] = "\uffff"
    doc["creatives"][4]["click_through"] = "https://brand.example/\ud800"
    doc["campaigns"][0]["start"] = "2026-01-01T00:00:00\u0000Z"
    errors = errors_of(doc)
    for n, char in enumerate(("U+0000", "U+001B", "U+D800", "U+FFFF")):
        assert has_issue(errors, f"$.creatives[{n}].title", f"contains {char}"), errors
    assert has_issue(errors, "$.creatives[4].click_through", "control characters")
    assert has_issue(errors, "$.campaigns[0].start", "is not an ISO 8601 date-time")
    ok = demo_doc()
    ok["creatives"][0]["title"] = "Tab\tnew line\n, emoji \U0001f600 and \u00e9"
    assert parse_catalog(ok).creatives[ok["creatives"][0]["id"]].title.startswith("Tab")


def test_click_throughs_must_fit_the_token_and_a_redirect() -> None:
    """A click-through rides in the signed click token (2,048 characters at most) and ends in
    a redirect's Location: one too long made every ad of its creative unservable, and ones
    a redirect cannot carry made /c fail after counting the click."""
    import random

    rng = random.Random(5)
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(1400))
    doc = demo_doc()
    doc["creatives"][0]["click_through"] = "https://brand.example/" + noise
    doc["creatives"][1]["click_through"] = "http://a.com\\@b.com/"
    doc["creatives"][2]["click_through"] = "http://\u200d.com/"
    doc["creatives"][3]["click_through"] = "http://\ufdd0.com/"
    errors = errors_of(doc)
    assert has_issue(errors, "$.creatives[0].click_through", "too long for a click-through")
    for n in (1, 2, 3):
        assert any(e.path == f"$.creatives[{n}].click_through" for e in errors), errors
    ok = demo_doc()
    ok["creatives"][0]["click_through"] = "https://brand.example/" + noise[:900]
    parse_catalog(ok)


def test_a_click_through_carries_only_the_macros_the_click_redirect_fills() -> None:
    """The player never sees a creative's click-through (it rides in the click token and
    /c redirects to it): a macro /c cannot fill, such as [IFA], reached the advertiser raw.
    Each such click-through is refused, naming the field and the macros; an icon's, which
    the player opens itself, may still carry them."""
    doc = demo_doc()
    doc["creatives"][0]["click_through"] = "https://a.example/c?ifa=[IFA]&cb=[CACHEBUSTING]"
    doc["creatives"][1]["click_through"] = "https://a.example/c?ua=[DEVICEUA]&ip=[DEVICEIP]"
    errors = errors_of(doc)
    # [CACHEBUSTING], which /c fills, is not among those named
    assert has_issue(errors, "$.creatives[0].click_through", ": [IFA] cannot be filled")
    assert has_issue(errors, "$.creatives[1].click_through", ": [DEVICEIP], [DEVICEUA] cannot")
    ok = demo_doc()
    ok["creatives"][0]["click_through"] = (
        "https://a.example/c?cb=[CACHEBUSTING]&ts=[TIMESTAMP]&asid=[ADSERVINGID]"
    )
    with_icon = next(c for c in ok["creatives"] if c.get("icons"))
    with_icon["icons"][0]["click_through"] = "https://a.example/why?ifa=[IFA]"
    parse_catalog(ok)


def test_a_fifo_at_the_catalog_path_is_an_error_not_a_hang(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "catalog.json"
    os.mkfifo(fifo)
    with pytest.raises(CatalogError, match="not a regular file"):
        load_catalog(fifo)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(CatalogError, match="cannot read file"):
        load_catalog(tmp_path / "dir.json")


def test_flight_years_out_of_range_are_errors() -> None:
    """Pacing does calendar arithmetic across a flight in its time zone: year 1 overflowed
    it and stopped pacing for every line item."""
    doc = demo_doc()
    doc["campaigns"][0]["start"] = "0001-01-01T00:00:00Z"
    doc["campaigns"][1]["end"] = "9999-12-31T00:00:00Z"
    errors = errors_of(doc)
    assert has_issue(errors, "$.campaigns[0].start", "out of range (years 1970-2999)")
    assert has_issue(errors, "$.campaigns[1].end", "out of range (years 1970-2999)")


def test_root_must_be_object() -> None:
    value: object
    for value in ([], "catalog", 3, None):
        assert errors_of(value)[0].path == "$"


def test_minimal_catalog_and_builtin_ad_rules() -> None:
    cat = parse_catalog({"version": "empty"})
    assert cat.ad_rules == {"default": AdRules()}
    assert not cat.line_items and not cat.blocked_domains
    cat = parse_catalog({"version": "x", "ad_rules": {"app": {"mid": {"max_ads": 6}}}})
    assert cat.rules_for("app").mid == BreakRule(AdRules().mid.duration_s, 6)
    assert cat.rules_for("app").pre == AdRules().pre


def test_defaults_applied(demo: Catalog) -> None:
    house = demo.line_items["li-house-promo"]
    assert house.positions == frozenset(BreakPosition) and house.slot is Slot.ANY
    assert house.currency == "USD" and house.pricing_model == "CPM"
    assert not house.targeting.rules and not house.frequency_caps
    camp = demo.campaigns[house.campaign_id]
    assert (house.start, house.end) == (camp.start, camp.end)


def test_duration_forms() -> None:
    doc = demo_doc()
    doc["creatives"][0]["duration"] = 14.967
    doc["creatives"][1].pop("duration")
    doc["creatives"][1]["duration_ms"] = 29970
    cat = parse_catalog(doc)
    assert cat.creatives[doc["creatives"][0]["id"]].duration_ms == 14967
    assert cat.creatives[doc["creatives"][1]["id"]].duration_ms == 29970


# --------------------------------------------------------------------------- files & JSON


def test_load_file_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path / "missing.json")
    assert info.value.errors[0].path == "$" and "cannot read" in info.value.errors[0].message

    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "x",\n "advertisers": [}', encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        load_catalog(bad)
    assert "invalid JSON" in info.value.errors[0].message and "line 2" in str(info.value)
    assert str(bad) in str(info.value)

    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"version": "caf\xe9"}')
    with pytest.raises(CatalogError):
        load_catalog(latin)


def test_repeated_json_keys_are_reported(tmp_path: Path) -> None:
    text = DEMO_PATH.read_text(encoding="utf-8").replace(
        '"tier": "sponsorship",', '"tier": "sponsorship", "tier": "house",', 1
    )
    path = tmp_path / "dup.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert has_issue(info.value.errors, "$.line_items[0].tier", "more than once")


def test_docs_example_loads() -> None:
    text = DOCS_PATH.read_text(encoding="utf-8")
    block = text.split("## Complete example", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    cat = parse_catalog(json.loads(block))
    assert cat.version.startswith("example-1+") and len(cat.line_items) == 1


# --------------------------------------------------------------------------- fuzzing

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "US", "ctv", "pre", "TV-14", "1d", "https://x.example/a", "IAB8-5",
                       "2026-01-01T00:00:00Z", "UTC", "video/mp4", "standard", "adv-x"])
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)

FIELD_NAMES = sorted(
    {
        key
        for collection in ("advertisers", "campaigns", "line_items", "creatives")
        for item in demo_doc()[collection]
        for key in item
    }
    | {"include", "exclude", "dayparts", "key_values", "genre", "country", "duration_ms",
       "window", "max", "scope", "days", "start_hour", "end_hour", "timezone", "_comment"}
)  # fmt: skip


def plausible_objects() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=8)


top_level = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just("v1"), json_values),
        "advertisers": st.lists(plausible_objects(), max_size=3) | json_values,
        "campaigns": st.lists(plausible_objects(), max_size=3),
        "line_items": st.lists(plausible_objects(), max_size=3),
        "creatives": st.lists(plausible_objects(), max_size=3),
        "ad_rules": st.dictionaries(st.sampled_from(["default", "app", "x y"]), json_values),
        "blocklist": json_values,
        "extra": json_values,
    },
)


def _parse_or_catalog_error(data: object) -> None:
    try:
        cat = parse_catalog(data)
    except CatalogError as exc:
        assert exc.errors
        assert all(isinstance(e, CatalogIssue) and e.path.startswith("$") for e in exc.errors)
        str(exc)
    else:
        assert isinstance(cat, Catalog)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(json_values)
def test_fuzz_arbitrary_json(data: object) -> None:
    _parse_or_catalog_error(data)


@FUZZ
@given(top_level)
def test_fuzz_catalog_shaped(data: object) -> None:
    _parse_or_catalog_error(data)


def _containers(node: Any, out: list[Any]) -> list[Any]:
    if isinstance(node, dict | list):
        out.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            _containers(child, out)
    return out


DEMO = demo_doc()
DEMO_TEXT = json.dumps(DEMO)
DEMO_LEAVES = [
    v
    for c in _containers(DEMO, [])
    for v in (c.values() if isinstance(c, dict) else c)
    if not isinstance(v, dict | list)
]


@FUZZ
@given(st.data())
def test_fuzz_demo_mutations(data: st.DataObject) -> None:
    doc = json.loads(DEMO_TEXT)
    for _ in range(data.draw(st.integers(1, 4))):
        containers = _containers(doc, [])
        node = data.draw(st.sampled_from(containers))
        op = data.draw(st.sampled_from(["replace", "plausible", "delete", "add", "dup"]))
        keys: list[Any] = list(node) if isinstance(node, dict) else list(range(len(node)))
        if op == "add" or not keys:
            if isinstance(node, dict):
                node[data.draw(st.sampled_from([*FIELD_NAMES, "zzz"]))] = data.draw(json_values)
            else:
                node.append(data.draw(json_values))
            continue
        key = data.draw(st.sampled_from(keys))
        if op == "replace":
            node[key] = data.draw(json_values)
        elif op == "plausible":  # a value that is valid somewhere else in the catalog
            node[key] = data.draw(st.sampled_from(DEMO_LEAVES))
        elif op == "delete":
            del node[key]
        elif isinstance(node, list):
            node.append(copy.deepcopy(node[key]))
        else:  # a sibling's value under this key
            node[key] = copy.deepcopy(node[data.draw(st.sampled_from(keys))])
    _parse_or_catalog_error(doc)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzz_raw_bytes(raw: bytes) -> None:
    try:
        data = decode_json(raw)
    except CatalogError as exc:
        assert exc.errors[0].path == "$"
        return
    _parse_or_catalog_error(data)


def test_deeply_nested_json_is_a_catalog_error() -> None:
    raw = "[" * 100_000 + "]" * 100_000
    with pytest.raises(CatalogError):
        decode_json(raw)
    deep: Any = "x"
    for _ in range(2000):
        deep = {"a": deep}
    with pytest.raises(CatalogError):
        parse_catalog({"version": "x", "blocklist": deep, "ad_rules": {"d": deep}})


# --------------------------------------------------------------------------- generator


@pytest.fixture(scope="module")
def generated_10k() -> Doc:
    return generate_catalog(10_000, 42, now=NOW)


def test_generator_is_deterministic() -> None:
    a = json.dumps(generate_catalog(300, 7, now=NOW))
    b = json.dumps(generate_catalog(300, 7, now=NOW))
    c = json.dumps(generate_catalog(300, 8, now=NOW))
    assert a == b and a != c
    naive = json.dumps(generate_catalog(300, 7, now=NOW.replace(tzinfo=None)))
    assert naive == a


@pytest.mark.parametrize("size", [0, 1, 10, 1000])
def test_generated_catalog_loads(size: int) -> None:
    doc = generate_catalog(size, 1, now=NOW)
    cat = parse_catalog(doc)
    assert len(cat.line_items) == size
    if size >= 10:
        assert cat.advertisers and cat.creatives
        assert any(li.tier is Tier.HOUSE for li in cat.line_items.values())


def test_generated_10k_loads(generated_10k: Doc, tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text(json.dumps(generated_10k), encoding="utf-8")
    cat = load_catalog(path)
    assert len(cat.line_items) == 10_000
    assert 800 <= len(cat.advertisers) <= 1100


def test_generated_catalog_is_realistic(generated_10k: Doc) -> None:
    cat = parse_catalog(generated_10k)
    items = list(cat.line_items.values())
    tiers = {t: sum(li.tier is t for li in items) for t in Tier}
    assert tiers[Tier.STANDARD] > tiers[Tier.GUARANTEED] > tiers[Tier.SPONSORSHIP] > 0
    assert tiers[Tier.HOUSE] > 0
    cpm = [li.price for li in items if li.tier in (Tier.STANDARD, Tier.GUARANTEED)]
    assert min(cpm) >= 5 and max(cpm) <= 60
    running = sum(li.start <= NOW < li.end for li in items)
    assert running > len(items) * 0.6
    dims = [len(li.targeting.rules) for li in items if li.tier is Tier.STANDARD]
    assert sum(1 <= n <= 3 for n in dims) > len(dims) * 0.6
    used = {d for li in items for d in li.targeting.rules}
    assert {"country", "genre", "device_type", "platform", "segment", "dma", "live"} <= used
    assert any(li.targeting.dayparts for li in items)
    assert any(li.targeting.key_values for li in items)
    assert any(li.frequency_caps for li in items)
    assert any(li.pacing.delivery.value != "asap" for li in items)
    seconds = {round(cr.duration_ms / 1000) for cr in cat.creatives.values()}
    assert {6, 15, 20, 30, 60} <= seconds
    comp = {a.competitive_category for a in cat.advertisers.values()}
    assert {"auto", "beer", "fast_food", "telecom", "streaming", "insurance", "pharma",
            "retail"} <= comp  # fmt: skip
    for cr in list(cat.creatives.values())[:500]:
        assert cr.mezzanine is not None and len(cr.renditions) >= 4
        assert all(r.url.startswith("https://") for r in cr.renditions)
        assert re.fullmatch(r"[A-Z]{4}\d{7}H", cr.universal_ad_id)


def test_gen_catalog_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cat.json"
    argv = ["--line-items", "50", "--seed", "3", "--now", "2026-11-25T12:00:00Z"]
    assert main_gen_catalog([*argv, "--out", str(out)]) == 0
    assert len(load_catalog(out).line_items) == 50
    capsys.readouterr()
    assert main_gen_catalog(argv) == 0
    stdout = capsys.readouterr().out
    assert json.loads(stdout) == json.loads(out.read_text(encoding="utf-8"))
    assert json.loads(stdout) == generate_catalog(50, 3, now=NOW)
    assert main_gen_catalog(["--seed", "1"]) == 2
    assert main_gen_catalog(["--line-items", "-4", "--seed", "1"]) == 2
    assert main_gen_catalog(["--line-items", "4", "--seed", "1", "--now", "soon"]) == 2
    assert main_gen_catalog(["--help"]) == 0
    assert main_gen_catalog([*argv, "--out", str(tmp_path / "no" / "dir.json")]) == 1


def test_captions_are_checked() -> None:
    doc = demo_doc()
    doc["creatives"][0]["captions"] = [
        {"url": "https://cdn.example/cc.vtt", "mime": "text/vtt", "language": "en-US"},
        {"url": "https://cdn.example/cc.xml", "mime": "text/xml", "language": "en"},
        {"url": "not a url", "mime": "text/vtt", "language": "english!"},
    ]
    errors = errors_of(doc)
    assert has_issue(errors, "$.creatives[0].captions[1].mime", "is not one of")
    assert any(e.path == "$.creatives[0].captions[2].url" for e in errors), describe(errors)
    assert has_issue(errors, "$.creatives[0].captions[2].language", "language tag")
    doc["creatives"][0]["captions"] = doc["creatives"][0]["captions"][:1]
    (cap,) = parse_catalog(doc).creatives[doc["creatives"][0]["id"]].captions
    assert (cap.mime, cap.language) == ("text/vtt", "en-US")


def test_break_rules_stay_within_what_vast_accepts() -> None:
    """A VMAP's ad tags carry each break's duration and ad count to /vast, which reads at
    most 900 s and 20 ads: a placement asking for more made every such tag a 400."""
    doc = demo_doc()
    doc["ad_rules"]["big"] = {"pre": {"duration": 1200}, "mid": {"max_ads": 30}}
    errors = errors_of(doc)
    assert has_issue(errors, "$.ad_rules.big.pre.duration", "out of range [0, 900]")
    assert has_issue(errors, "$.ad_rules.big.mid.max_ads", "out of range [0, 20]")


def test_more_universal_ad_ids_load_after_the_primary_one() -> None:
    doc = demo_doc()
    cr = doc["creatives"][0]
    more = [
        {"registry": "clearcast.co.uk", "value": "ABC/DEF123/030"},
        {"registry": "registry.example", "value": "X-1"},
    ]
    cr["universal_ad_ids"] = more
    loaded = parse_catalog(doc).creatives[cr["id"]]
    assert loaded.universal_ad_id == cr["universal_ad_id"]
    assert [(u.registry, u.value) for u in loaded.more_universal_ad_ids] == [
        ("clearcast.co.uk", "ABC/DEF123/030"),
        ("registry.example", "X-1"),
    ]
    del cr["universal_ad_ids"]
    assert parse_catalog(doc).creatives[cr["id"]].more_universal_ad_ids == ()


def test_every_error_of_universal_ad_ids_is_reported() -> None:
    doc = demo_doc()
    cr = doc["creatives"][0]
    primary = {"registry": cr.get("universal_ad_id_registry", "ad-id.org")}
    cr["universal_ad_ids"] = [
        {"registry": "clearcast.co.uk", "value": "ABC/DEF123/030"},
        {"registry": "clearcast.co.uk", "value": "ABC/DEF123/030"},
        {**primary, "value": cr["universal_ad_id"]},
        {"registry": "registry.example", "value": "Unknown"},
        {"registry": "", "value": "a b"},
        {"registry": "registry.example", "value": "Y", "vlaue": "Z"},
        {"value": "Z"},
    ]
    p = "$.creatives[0].universal_ad_ids"
    assert_exactly(
        errors_of(doc),
        [
            (f"{p}[1].value", "is already given"),
            (f"{p}[2].value", "is already given"),
            (f"{p}[3].value", "not 'unknown'"),
            (f"{p}[4].registry", "must not be empty"),
            (f"{p}[4].value", "not an id without spaces"),
            (f"{p}[5].vlaue", "did you mean 'value'"),
            (f"{p}[6].registry", "required field"),
        ],
    )
    cr["universal_ad_ids"] = [{"registry": "r.example", "value": f"V{n}"} for n in range(9)]
    assert_exactly(errors_of(doc), [(p, "at most 8 items")])


def test_creatives_sharing_any_universal_ad_id_are_one_ad() -> None:
    """A pod holds one of the creatives that share an id, in any registry."""
    doc = demo_doc()
    first, second = doc["creatives"][0], doc["creatives"][1]
    shared = {"registry": "clearcast.co.uk", "value": "ABC/DEF123/030"}
    first["universal_ad_ids"] = [shared]
    creatives = parse_catalog(doc).creatives
    assert creatives[first["id"]].media_key != creatives[second["id"]].media_key
    second["universal_ad_ids"] = [{"registry": "registry.example", "value": "X"}, shared]
    creatives = parse_catalog(doc).creatives
    assert creatives[first["id"]].media_key == creatives[second["id"]].media_key


def test_icon_fallback_images_and_trackers_load() -> None:
    doc = demo_doc()
    icon = doc["creatives"][0]["icons"][0]
    cr_id = doc["creatives"][0]["id"]
    (plain,) = parse_catalog(doc).creatives[cr_id].icons
    assert (plain.click_fallback_images, plain.view_tracking_urls) == ((), ())
    assert plain.click_tracking_urls == ()
    view = "https://px.example/iv?cb=[CACHEBUSTING]&gdpr=${GDPR}"
    click = "https://px.example/ic?ts=[TIMESTAMP]"
    icon.update(
        click_fallback_images=[
            {"image_url": "https://i.example/a.png", "width": 400, "height": 300},
            {"image_url": "https://i.example/b.png", "width": 40, "height": 30, "alt_text": "Why"},
        ],
        view_tracking_urls=[view],
        click_tracking_urls=[click],
    )
    loaded = parse_catalog(doc).creatives[cr_id]
    (i,) = loaded.icons
    assert [(f.image_url, f.width, f.height, f.alt_text) for f in i.click_fallback_images] == [
        ("https://i.example/a.png", 400, 300, None),
        ("https://i.example/b.png", 40, 30, "Why"),
    ]
    assert (i.view_tracking_urls, i.click_tracking_urls) == ((view,), (click,))
    # the renderer fills the privacy macro of the icon's tracker in
    assert loaded.privacy_macros


def test_every_error_of_an_icon_is_reported() -> None:
    doc = demo_doc()
    doc["creatives"][0]["icons"][0].update(
        click_fallback_images=[
            {"image_url": "http://i.example/a.png", "width": 400, "height": 300},
            {"image_url": "https://i.example/b.png", "height": 30, "alt_text": ""},
        ],
        view_tracking_urls=["https://px.example/iv?s=[STOREID]", "http://px.example/iv"],
        click_tracking_urls=["https://px.example/ic?x=${ADDTL_CONSENT}"] * 9,
    )
    p = "$.creatives[0].icons[0]"
    assert_exactly(
        errors_of(doc),
        [
            (f"{p}.click_fallback_images[0].image_url", "must be https"),
            (f"{p}.click_fallback_images[1].width", "required field"),
            (f"{p}.click_fallback_images[1].alt_text", "must not be empty"),
            (f"{p}.view_tracking_urls[0]", "[STOREID] is no IAB VAST macro"),
            (f"{p}.view_tracking_urls[1]", "must be https"),
            *((f"{p}.click_tracking_urls[{n}]", "no privacy macro") for n in range(9)),
            (f"{p}.click_tracking_urls", "at most 8 items"),
        ],
    )


def test_ifa_type_and_genre_rules_are_case_folded() -> None:
    """Requests lower-case ``ifa_type`` (OpenRTB did, /vast now does too), as they do
    ``genre``: a catalog's ``ifa_type include ["RIDA"]`` was kept as written and matched no
    request. The catalog folds both dimensions' values."""
    doc = demo_doc()
    li = doc["line_items"][LI_BLUEFIN]
    li["targeting"]["ifa_type"] = {"include": ["RIDA", "aaid"], "exclude": ["IDFA"]}
    li["targeting"]["genre"] = {"include": ["Sports"]}
    rules = parse_catalog(doc).line_items[li["id"]].targeting.rules
    assert rules["ifa_type"] == Rule(
        include=frozenset({"rida", "aaid"}), exclude=frozenset({"idfa"})
    )
    assert rules["genre"] == Rule(include=frozenset({"sports"}))


def test_every_rule_value_with_a_comma_is_reported() -> None:
    """A request lists several values with commas (``genre``, ``segments``, ``kv_<key>``),
    so a rule value such as ``"house,daypart"`` matches no request: it loaded silently and
    the line item never served. Every such value is an error, with its path."""
    doc = demo_doc()
    t = doc["line_items"][LI_BLUEFIN]["targeting"]
    t["genre"] = {"include": ["sports", "drama,comedy"]}
    t["segment"] = {"exclude": ["a,b"]}
    t["key_values"] = {"t": {"include": ["house,daypart", "daypart"], "exclude": [","]}}
    # single values may hold a comma (OpenRTB sends content.series "Law & Order, SVU" whole)
    doc["line_items"][LI_CTV]["targeting"]["series"] = {"include": ["Law & Order, SVU"]}
    doc["line_items"][LI_CTV]["targeting"]["channel"] = {"exclude": ["ABC, Inc."]}
    p = f"$.line_items[{LI_BLUEFIN}].targeting"
    assert_exactly(
        errors_of(doc),
        [
            (f"{p}.genre.include[1]", "contains a comma"),
            (f"{p}.segment.exclude[0]", "contains a comma"),
            (f"{p}.key_values.t.include[0]", "contains a comma"),
            (f"{p}.key_values.t.exclude[0]", "contains a comma"),
        ],
    )


def test_every_error_names_its_entity_by_id() -> None:
    """A trafficker with thousands of line items cannot find ``$.line_items[4211]``: every
    error inside an advertiser, campaign, line item or creative also names it by its id
    (the path is kept as it was), and one whose id is missing, not a string, malformed or
    given twice says so. Every error is still reported."""
    doc = demo_doc()
    adv, camp, li, cr = (doc[k] for k in ("advertisers", "campaigns", "line_items", "creatives"))
    adv[0]["domain"] = "Not A Domain"
    camp[1]["status"] = "live"
    li[2]["tier"] = "premium"
    cr[3]["duration"] = -1
    li[4]["id"] = li[5]["id"]  # given twice
    li[4]["price"] = -3
    del li[6]["id"]
    li[6]["tier"] = "gold"
    cr[7]["id"] = 42
    cr[7]["rating"] = "R"
    li[8]["id"] = "bad id"
    li[8]["slot"] = "middle"
    li[9] = 5  # not an object: nothing to name it by
    twice = li[5]["id"]
    errors = errors_of(doc)
    by_path = {e.path: e for e in errors}
    named = [
        ("$.advertisers[0].domain", adv[0]["id"], f'(in advertiser "{adv[0]["id"]}")'),
        ("$.campaigns[1].status", camp[1]["id"], f'(in campaign "{camp[1]["id"]}")'),
        ("$.line_items[2].tier", li[2]["id"], f'(in line item "{li[2]["id"]}")'),
        ("$.creatives[3].duration", cr[3]["id"], f'(in creative "{cr[3]["id"]}")'),
        (
            "$.line_items[4].price",
            twice,
            f'(in line item "{twice}", an id given to more than one line item)',
        ),
        ("$.line_items[6].tier", None, "(in a line item with no id)"),
        ("$.creatives[7].rating", None, "(in a creative whose id 42 is not a string)"),
        ("$.line_items[8].slot", "bad id", '(in line item "bad id", an invalid id)'),
    ]
    for path, ident, where in named:
        issue = by_path[path]
        assert (issue.id, str(issue)) == (ident, f"{path}: {issue.message} {where}"), issue
    # the errors about the id itself say what is wrong with it, and are not told twice
    for path, ident, fragment in [
        ("$.line_items[5].id", twice, "duplicate line item id"),
        ("$.line_items[6].id", None, "required field of line item is missing"),
        ("$.creatives[7].id", None, "expected a string, got integer 42"),
        ("$.line_items[8].id", "bad id", "is not a valid id"),
    ]:
        issue = by_path[path]
        assert fragment in issue.message and issue.entity is None and issue.id == ident, issue
        assert str(issue) == f"{path}: {issue.message}"
    assert by_path["$.line_items[9]"].id is None and by_path["$.line_items[9]"].entity is None
    # what is in no entity names none
    doc["version"] = "bad version!"
    version = {e.path: e for e in errors_of(doc)}["$.version"]
    assert (version.entity, version.id) == (None, None)


def test_values_differing_only_in_case_conflict_where_matching_folds_case() -> None:
    """``genre`` and ``ifa_type`` are matched in any case, so ``include ["Drama"]`` with
    ``exclude ["drama"]`` is one value both included and excluded: it loaded, and the
    exclude silently won. Every such value is an error; a dimension matched case-sensitively
    (``series``, ``segment``, a key-value) keeps its two values."""
    doc = demo_doc()
    t = doc["line_items"][LI_BLUEFIN]["targeting"]
    t["genre"] = {"include": ["Drama", "news"], "exclude": ["drama", "NEWS", "kids"]}
    t["ifa_type"] = {"include": ["rida"], "exclude": ["RIDA"]}
    p = f"$.line_items[{LI_BLUEFIN}].targeting"
    errors = errors_of(doc)
    assert_exactly(
        errors,
        [
            (f"{p}.genre.exclude", '"NEWS" is both included (as "news") and excluded'),
            (f"{p}.genre.exclude", '"drama" is both included (as "Drama") and excluded'),
            (f"{p}.ifa_type.exclude", '"RIDA" is both included (as "rida") and excluded'),
        ],
    )
    assert all("matched in any case" in e.message for e in errors), describe(errors)
    sensitive = demo_doc()
    t = sensitive["line_items"][LI_BLUEFIN]["targeting"]
    t["series"] = {"include": ["Drama"], "exclude": ["drama"]}
    t["segment"] = {"include": ["Auto"], "exclude": ["auto"]}
    t["key_values"] = {"t": {"include": ["House"], "exclude": ["house"]}}
    li_id = sensitive["line_items"][LI_BLUEFIN]["id"]
    targeting = parse_catalog(sensitive).line_items[li_id].targeting
    assert targeting.rules["series"] == Rule(frozenset({"Drama"}), frozenset({"drama"}))
    assert targeting.rules["segment"] == Rule(frozenset({"Auto"}), frozenset({"auto"}))
    assert targeting.key_values["t"] == Rule(frozenset({"House"}), frozenset({"house"}))
