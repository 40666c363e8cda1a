"""SIMID interactive files (a creative's ``interactive``): what the catalog loader takes and
refuses, and that an interactive file never makes an ad playable on its own. What each VAST
version emits is judged in ``test_conformance.py`` (``test_simid_interactive_files``), the
fast path against the template in ``test_render.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.conftest import ClientFactory
from tests.test_catalog import assert_exactly, demo_doc, errors_of
from tests.test_conformance import SIMID_FILES, SIMID_GAME, SIMID_URL, _odd_creative
from tests.test_conformance import _with_odd_advertiser as with_odd_advertiser
from tests.test_openrtb import _explanation
from vastserver.catalog.load import parse_catalog
from vastserver.catalog.model import InteractiveFile

Doc = dict[str, Any]
CR = "$.creatives[0]"
FILE = f"{CR}.interactive[0]"


def _with(*files: object, creative: int = 0) -> Doc:
    doc = demo_doc()
    doc["creatives"][creative]["interactive"] = list(files)
    return doc


def test_a_creative_carries_its_simid_files_with_their_defaults() -> None:
    cat = parse_catalog(_with(*SIMID_FILES))
    cr = cat.creatives[demo_doc()["creatives"][0]["id"]]
    assert cr.interactive == (
        InteractiveFile(SIMID_URL, "SIMID", "text/html", variable_duration=False),
        InteractiveFile(SIMID_GAME, "SIMID", "text/html", variable_duration=True),
    )
    # without the field: none (every other creative of the demo)
    assert all(not c.interactive for c in cat.creatives.values() if c is not cr)


@pytest.mark.parametrize(
    ("file", "path", "message"),
    [
        # the URL: https only, a URI once the player fills its IAB macros, no privacy macro
        ({"url": "http://simid.example/a.html"}, f"{FILE}.url", "interactive files must be https"),
        ({"url": "simid.html"}, f"{FILE}.url", "must be an http or https url"),
        (
            {"url": "https://simid.example/a?s=[STOREID]"},
            f"{FILE}.url",
            "[STOREID] is no IAB VAST macro",
        ),
        ({"url": "https://simid.example/a?g=${GDPR}"}, f"{FILE}.url", "percent-encode it (%7B)"),
        ({"url": 7}, f"{FILE}.url", "expected an http(s) url"),
        # the framework: SIMID, exactly (players ignore near misses), and nothing else
        ({"api_framework": "simid"}, f"{FILE}.api_framework", 'is not one of "SIMID"'),
        ({"api_framework": "VPAID"}, f"{FILE}.api_framework", 'is not one of "SIMID"'),
        ({"api_framework": None}, f"{FILE}.api_framework", "got null"),
        # a SIMID file is an HTML document
        ({"type": "application/javascript"}, f"{FILE}.type", "type must be 'text/html'"),
        ({"type": "html"}, f"{FILE}.type", "a mime type"),
        ({"variable_duration": "yes"}, f"{FILE}.variable_duration", "expected true or false"),
        ({"variableDuration": True}, f"{FILE}.variableDuration", "unknown field"),
    ],
)
def test_each_bad_field_is_reported_at_its_path(file: Doc, path: str, message: str) -> None:
    good = {"url": SIMID_URL, "api_framework": "SIMID"}
    assert_exactly(errors_of(_with({**good, **file})), [(path, message)])


def test_missing_fields_and_bad_lists() -> None:
    assert_exactly(errors_of(_with({"api_framework": "SIMID"})), [(f"{FILE}.url", "missing")])
    assert_exactly(errors_of(_with({"url": SIMID_URL})), [(f"{FILE}.api_framework", "missing")])
    doc = demo_doc()
    doc["creatives"][0]["interactive"] = SIMID_FILES[0]
    assert_exactly(errors_of(doc), [(f"{CR}.interactive", "expected an array")])
    assert_exactly(errors_of(_with(*[SIMID_FILES[0]] * 9)), [(f"{CR}.interactive", "at most 8")])


def test_simid_is_still_no_api_framework_of_the_creative() -> None:
    """``api_framework`` keeps its one value (VPAID, which keeps a creative off CTV): SIMID
    files go in ``interactive``."""
    doc = demo_doc()
    doc["creatives"][0]["api_framework"] = "SIMID"
    assert_exactly(errors_of(doc), [(f"{CR}.api_framework", 'is not one of "VPAID"')])


def test_a_vast_tag_creative_cannot_carry_them() -> None:
    """A wrapper's creative is the tag's ad: that ad brings its own interactive files (and
    the wrapper has no MediaFiles to put ours in). Refused even empty, as the other fields
    a wrapper cannot have."""
    for files in (SIMID_FILES, []):
        doc = demo_doc()
        cr = doc["creatives"][0]
        for key in ("renditions", "mezzanine", "click_through", "captions"):
            cr.pop(key, None)
        cr["vast_tag_url"] = "https://tag.example/vast?id=1"
        cr["interactive"] = files
        assert_exactly(errors_of(doc), [(f"{CR}.interactive", "not with 'vast_tag_url'")])


def test_interactive_start_trackers_need_interactive_files() -> None:
    """The advertiser's ``interactiveStart`` pixels (VAST 4.2+ sends the event) are taken
    on a creative with interactive files; on one without (a wrapper included, whose tag
    brings its own) the event is never sent, so they are refused rather than kept silent."""
    pixels = ["https://px.example/is?cb=[CACHEBUSTING]", "https://dv.example/is?g=${GDPR}"]
    doc = _with(*SIMID_FILES)
    doc["creatives"][0]["trackers"] = {"interactiveStart": pixels}
    cr = parse_catalog(doc).creatives[doc["creatives"][0]["id"]]
    assert cr.trackers["interactiveStart"] == tuple(pixels)
    assert cr.privacy_macros  # the vendor's ${GDPR} is filled in at serve time
    why = "needs interactive files (only SIMID creatives send interactiveStart)"
    for files in (None, []):
        doc = demo_doc()
        if files is not None:
            doc["creatives"][0]["interactive"] = files
        doc["creatives"][0]["trackers"] = {"interactiveStart": pixels}
        assert_exactly(errors_of(doc), [(f"{CR}.trackers.interactiveStart", why)])
    doc = demo_doc()
    cr_doc = doc["creatives"][0]
    for key in ("renditions", "mezzanine", "click_through", "captions"):
        cr_doc.pop(key, None)
    cr_doc["vast_tag_url"] = "https://tag.example/vast?id=1"
    cr_doc["trackers"] = {"interactiveStart": pixels}
    assert_exactly(errors_of(doc), [(f"{CR}.trackers.interactiveStart", why)])


def test_every_error_is_reported_at_once() -> None:
    doc = _with(
        {"url": "http://simid.example/a.html", "api_framework": "simid", "type": "text/plain"},
        {"url": SIMID_URL, "api_framework": "SIMID", "variable_duration": 1},
    )
    doc["creatives"][1]["interactive"] = [{"url": SIMID_GAME}]
    assert_exactly(
        errors_of(doc),
        [
            (f"{FILE}.url", "must be https"),
            (f"{FILE}.api_framework", 'is not one of "SIMID"'),
            # the type of a file whose framework is not valid is not judged by it
            (f"{CR}.interactive[1].variable_duration", "expected true or false"),
            ("$.creatives[1].interactive[0].api_framework", "missing"),
        ],
    )


def _simid_catalog(tmp_path: Path) -> Path:
    doc = with_odd_advertiser()
    cr, li = _odd_creative("simid", 1, interactive=SIMID_FILES)
    doc["creatives"].append(cr)
    doc["line_items"].append(li)
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc))
    return path


def _bid(mimes: list[str]) -> Doc:
    return {
        "id": "r1",
        "imp": [
            {
                "id": "1",
                "video": {"poddur": 15, "maxseq": 1, "protocols": [13], "mimes": mimes},
            }
        ],
        "app": {"id": "a", "content": {"series": "odd-simid"}},
        "device": {"devicetype": 3, "ip": "203.0.113.9", "ua": "Roku/DVP-12.0"},
        "ext": {"vastserver": {"debug": 1}},
    }


async def test_an_interactive_file_alone_is_no_playable_ad(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """OpenRTB ``video.mimes`` pick the renditions a player takes; a SIMID file is no
    rendition: a player taking ``text/html`` only gets no SIMID creative (``mime_type``,
    as any creative without a rendition it takes), and one taking mp4 gets the mp4 files
    with the interactive files beside them."""
    client: Any = await make_client(catalog=str(_simid_catalog(tmp_path)))
    resp = await client.post("/openrtb2/pod", json=_bid(["text/html"]))
    assert resp.status == 200, await resp.text()
    xml = bytes(await resp.read())
    assert list(etree.fromstring(xml).iter("{*}Ad")) == []
    reasons = {c["creative_id"]: c["reason"] for c in _explanation(xml)["candidates"]}
    assert reasons["cr-odd-simid"] == "mime_type"

    resp = await client.post("/openrtb2/pod", json=_bid(["video/mp4"]))
    root = etree.fromstring(await resp.read())
    (ad,) = root.iter("{*}Ad")
    assert ad.get("id") == "li-odd-simid-cr-odd-simid"
    assert {m.get("type") for m in root.iter("{*}MediaFile")} == {"video/mp4"}
    files = [(f.text or "").strip() for f in root.iter("{*}InteractiveCreativeFile")]
    assert files == [SIMID_URL, SIMID_GAME]


def test_the_documented_example_loads() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "catalog.md").read_text()
    section = text.split("### Interactive file", 1)[1].split("\n### ", 1)[0]
    example = json.loads(section.split("```json", 1)[1].split("```", 1)[0])
    cat = parse_catalog(_with(example))
    (cr,) = (c for c in cat.creatives.values() if c.interactive)
    assert cr.interactive == (InteractiveFile(example["url"], "SIMID"),)
