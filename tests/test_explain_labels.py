"""The explanation (``GET /decide``, ``debug=1``) shows the competitive labels of every
candidate it lists, not only of the pod's ads: a candidate dropped by separation is
explained by its labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import DEMO_CATALOG, ClientFactory

Doc = dict[str, Any]


def _labelled_catalog(tmp_path: Path) -> tuple[Path, dict[tuple[str, str], list[str]]]:
    """The demo catalog, every line item labelled ``one_per_pod`` (one ad a pod) and every
    other creative ``promo``; with each (line item, creative)'s labels: its line item's,
    its creative's and its advertiser's category."""
    doc: Doc = json.loads(DEMO_CATALOG.read_text(encoding="utf-8"))
    for li in doc["line_items"]:
        li["competitive_categories"] = ["one_per_pod"]
    for n, cr in enumerate(doc["creatives"]):
        if n % 2 == 0:
            cr["competitive_categories"] = ["promo"]
    category = {a["id"]: a.get("competitive_category") for a in doc["advertisers"]}
    creatives = {cr["id"]: cr for cr in doc["creatives"]}
    labels = {
        (li["id"], cr_id): sorted(
            {
                *li["competitive_categories"],
                *creatives[cr_id].get("competitive_categories", ()),
                *([own] if (own := category[creatives[cr_id]["advertiser_id"]]) else []),
            }
        )
        for li in doc["line_items"]
        for cr_id in li["creative_ids"]
    }
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path, labels


async def _decide(client: Any, query: str) -> Doc:
    resp = await client.get(f"/decide?{query}")
    assert resp.status == 200, await resp.text()
    got: Doc = await resp.json()
    return got


def _check_labels(explained: Doc, labels: dict[tuple[str, str], list[str]]) -> None:
    """Every candidate, and every pod ad, shows its own labels."""
    for c in [*explained["candidates"], *explained["pod"]["ads"]]:
        assert c["competitive_labels"] == labels[c["line_item_id"], c["creative_id"]], c


async def test_every_candidate_shows_its_competitive_labels(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """One label on every line item leaves one ad a pod: the candidates dropped by
    ``competitive_separation`` show the label they share with it, as every other
    candidate (not selected, filtered, outranked) shows its own."""
    path, labels = _labelled_catalog(tmp_path)
    client: Any = await make_client(catalog=str(path), candidate_limit=4)
    explained = await _decide(client, "pod_duration=120&max_ads=4&device_type=ctv&test=1")
    (ad,) = explained["pod"]["ads"]
    _check_labels(explained, labels)
    reasons = {c["reason"] for c in explained["candidates"]}
    assert {None, "competitive_separation", "outranked"} <= reasons, reasons
    for c in explained["candidates"]:
        if c["reason"] == "competitive_separation":
            assert set(c["competitive_labels"]) & set(ad["competitive_labels"]), c


async def test_the_labels_explain_a_drop_by_the_sessions_last_break(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A label that played sits out the session's next break: the candidates of another
    creative dropped there (``stream_separation``) show the label the last break's ad
    had."""
    path, labels = _labelled_catalog(tmp_path)
    client: Any = await make_client(catalog=str(path))
    q = "pod_duration=120&max_ads=4&device_type=ctv&session=s-lab&device_id=ifa-lab&avail="
    (first,) = (await _decide(client, q + "0"))["pod"]["ads"]
    explained = await _decide(client, q + "1")
    _check_labels(explained, labels)
    dropped = [c for c in explained["candidates"] if c["reason"] == "stream_separation"]
    others = [c for c in dropped if c["creative_id"] != first["creative_id"]]
    assert others
    for c in others:
        assert "one_per_pod" in c["competitive_labels"], c
