"""Data-driven decision cases: one JSON file per case in ``tests/cases/decision/``.

Each case builds a small catalog, starts the real app over loopback HTTP with a fake clock at the
case's ``now`` and a seeded RNG, replays the case's earlier ``/vast`` requests (``sessions``:
frequency caps and budgets count them), asks ``/decide`` or ``/vmap?inline=1``, and compares
the chosen pod(s) and the rejection reasons with the case's expectations. ``/decide`` cases also
replay everything on a second, fresh app and ask ``/vast``, which must serve the same pod.

The file format and the catalog patch language are documented in
``tests/cases/decision/README.md``; case files are validated strictly, so a typo in a case is an
error, never a silently vacuous check.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from tests.conftest import FIXED_NOW, ClientFactory, FakeClock
from vastserver.catalog.load import CatalogError, parse_catalog
from vastserver.pipeline.reasons import Reason

CASES_DIR = Path(__file__).resolve().parent / "cases" / "decision"
BASES_DIR = CASES_DIR / "_bases"
MIN_CASES = 45
SEED = 20261125

COLLECTIONS = ("advertisers", "campaigns", "line_items", "creatives")
SETTABLE = ("blocklist", "ad_rules")
CASE_KEYS = frozenset(
    {
        "description",
        "catalog",
        "now",
        "query",
        "headers",
        "sessions",
        "endpoint",
        "expect",
        "xfail",
        "settings",
    }
)
SESSION_KEYS = frozenset({"query", "headers"})
ENDPOINTS = ("decide", "vmap")
DECIDE_EXPECT_KEYS = frozenset({"pod", "rejected", "not_in_pod"})
VMAP_EXPECT_KEYS = frozenset({"breaks", "not_in_pod"})
REASONS = frozenset(r.value for r in Reason)
VMAP_NS = "http://www.iab.net/videosuite/vmap"


class CaseFileError(Exception):
    """The case file itself is malformed (never turned into an expected failure)."""


class CaseMismatch(AssertionError):
    """The server's decision differs from the case's expectation."""


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    description: str
    catalog: dict[str, Any]
    now: datetime
    query: dict[str, str]
    headers: dict[str, str]
    sessions: tuple[tuple[dict[str, str], dict[str, str]], ...]
    """Earlier ``/vast`` requests (query, headers), sent in order before the checked one."""
    settings: Mapping[str, str]
    """Server setting overrides (``load_settings`` names, e.g. ``separation_breaks``)."""
    endpoint: str
    pod: tuple[str, ...] | None
    """``decide``: the exact ordered pod (``line_item/creative`` keys)."""
    breaks: tuple[tuple[str, ...], ...] | None
    """``vmap``: the exact ordered pod of every break, in schedule order."""
    rejected: Mapping[str, str]
    not_in_pod: tuple[str, ...]
    xfail: str | None


# --------------------------------------------------------------------------- reading cases


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            raise CaseFileError(f"key {k!r} appears more than once in one object")
        d[k] = v
    return d


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise CaseFileError(f"{path.name}: invalid JSON: {e}") from None


def _obj(v: object, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise CaseFileError(f"{where}: expected an object, got {type(v).__name__}")
    return v


def _keys(d: Mapping[str, Any], allowed: frozenset[str] | Sequence[str], where: str) -> None:
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise CaseFileError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _text(v: object, where: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise CaseFileError(f"{where}: expected a non-empty string")
    return v


def _str_map(v: object, where: str) -> dict[str, str]:
    d = _obj(v, where)
    for k, x in d.items():
        if not isinstance(x, str):
            raise CaseFileError(f'{where}.{k}: values must be strings (write "60", not 60)')
    return dict(d)


def _key_list(v: object, where: str) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise CaseFileError(f'{where}: expected an array of "line_item/creative" strings')
    out = tuple(_cand_key(x, f"{where}[{i}]") for i, x in enumerate(v))
    if len(set(out)) != len(out):
        raise CaseFileError(f"{where}: repeated entries")
    return out


def _cand_key(v: object, where: str) -> str:
    if not isinstance(v, str) or v.count("/") != 1 or "" in v.split("/"):
        raise CaseFileError(f'{where}: expected "line_item/creative", got {v!r}')
    return v


def _time(v: object, where: str) -> datetime:
    if not isinstance(v, str):
        raise CaseFileError(f"{where}: expected an ISO 8601 date-time string")
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise CaseFileError(f"{where}: {v!r} is not an ISO 8601 date-time") from None
    if t.utcoffset() is None:
        raise CaseFileError(f"{where}: {v!r} needs a UTC offset such as Z")
    return t.astimezone(UTC)


def _apply_patch(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """remove, then replace (shallow field merge), then add, then set (see the README)."""
    _keys(patch, ("remove", "replace", "add", "set"), "catalog.patch")
    cat = copy.deepcopy(base)

    def index(coll: str) -> dict[str, int]:
        return {item["id"]: i for i, item in enumerate(cat.setdefault(coll, []))}

    remove = _obj(patch.get("remove", {}), "catalog.patch.remove")
    _keys(remove, COLLECTIONS, "catalog.patch.remove")
    for coll, ids in remove.items():
        where = f"catalog.patch.remove.{coll}"
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise CaseFileError(f"{where}: expected an array of ids")
        known = index(coll)
        for ident in ids:
            if ident not in known:
                raise CaseFileError(f"{where}: no {coll} entry with id {ident!r} in the base")
        cat[coll] = [item for item in cat[coll] if item["id"] not in set(ids)]

    replace = _obj(patch.get("replace", {}), "catalog.patch.replace")
    _keys(replace, COLLECTIONS, "catalog.patch.replace")
    for coll, changes in replace.items():
        where = f"catalog.patch.replace.{coll}"
        known = index(coll)
        for ident, fields in _obj(changes, where).items():
            fields = _obj(fields, f"{where}.{ident}")
            if ident not in known:
                raise CaseFileError(f"{where}: no {coll} entry with id {ident!r}")
            if "id" in fields:
                raise CaseFileError(f"{where}.{ident}: ids cannot be replaced")
            cat[coll][known[ident]].update(copy.deepcopy(fields))

    add = _obj(patch.get("add", {}), "catalog.patch.add")
    _keys(add, COLLECTIONS, "catalog.patch.add")
    for coll, items in add.items():
        where = f"catalog.patch.add.{coll}"
        if not isinstance(items, list):
            raise CaseFileError(f"{where}: expected an array of objects")
        known = index(coll)
        for i, item in enumerate(items):
            item = _obj(item, f"{where}[{i}]")
            if item.get("id") in known:
                raise CaseFileError(f"{where}[{i}]: id {item['id']!r} already exists")
            cat[coll].append(copy.deepcopy(item))

    sets = _obj(patch.get("set", {}), "catalog.patch.set")
    _keys(sets, SETTABLE, "catalog.patch.set")
    for field, value in sets.items():
        cat[field] = copy.deepcopy(value)
    return cat


def build_catalog(spec: object) -> dict[str, Any]:
    """A complete catalog document, or ``{"base": name, "patch": {...}}`` over a shared base."""
    spec = _obj(spec, "catalog")
    if "base" not in spec:
        return copy.deepcopy(spec)
    _keys(spec, ("base", "patch"), "catalog (with a base)")
    name = _text(spec["base"], "catalog.base")
    path = BASES_DIR / f"{name}.json"
    if "/" in name or not path.is_file():
        raise CaseFileError(f"catalog.base: no base named {name!r} in {BASES_DIR}")
    return _apply_patch(_read_json(path), _obj(spec.get("patch", {}), "catalog.patch"))


def _known_candidates(catalog: Mapping[str, Any]) -> set[str]:
    return {
        f"{li['id']}/{cr}"
        for li in catalog.get("line_items", [])
        for cr in li.get("creative_ids", [])
    }


def parse_case(data: object, name: str) -> Case:
    d = _obj(data, name)
    _keys(d, CASE_KEYS, name)
    for required in ("description", "catalog", "query", "expect"):
        if required not in d:
            raise CaseFileError(f"{name}: missing required key {required!r}")
    description = _text(d["description"], "description")
    catalog = build_catalog(d["catalog"])
    try:
        parse_catalog(catalog, source=f"case {name}")
    except CatalogError as e:
        raise CaseFileError(f"{name}: the case's catalog is invalid:\n{e}") from None
    now = _time(d["now"], "now") if "now" in d else FIXED_NOW
    query = _str_map(d["query"], "query")
    headers = _str_map(d.get("headers", {}), "headers")
    raw_sessions = d.get("sessions", [])
    if not isinstance(raw_sessions, list):
        raise CaseFileError('sessions: expected an array of {"query": ..., "headers": ...}')
    sessions = []
    for i, entry in enumerate(raw_sessions):
        entry = _obj(entry, f"sessions[{i}]")
        _keys(entry, SESSION_KEYS, f"sessions[{i}]")
        if "query" not in entry:
            raise CaseFileError(f"sessions[{i}]: 'query' is required")
        sessions.append(
            (
                _str_map(entry["query"], f"sessions[{i}].query"),
                _str_map(entry.get("headers", {}), f"sessions[{i}].headers"),
            )
        )
    settings = _str_map(d.get("settings", {}), "settings")
    endpoint = d.get("endpoint", "decide")
    if endpoint not in ENDPOINTS:
        raise CaseFileError(f"endpoint: must be one of {', '.join(ENDPOINTS)}")
    xfail = _text(d["xfail"], "xfail") if "xfail" in d else None

    expect = _obj(d["expect"], "expect")
    pod: tuple[str, ...] | None = None
    breaks: tuple[tuple[str, ...], ...] | None = None
    rejected: dict[str, str] = {}
    if endpoint == "decide":
        _keys(expect, DECIDE_EXPECT_KEYS, "expect")
        if "pod" not in expect:
            raise CaseFileError("expect: 'pod' is required ([] for no fill)")
        pod = _key_list(expect["pod"], "expect.pod")
        for k, reason in _obj(expect.get("rejected", {}), "expect.rejected").items():
            _cand_key(k, "expect.rejected key")
            if reason not in REASONS:
                raise CaseFileError(
                    f"expect.rejected.{k}: {reason!r} is not a Reason value "
                    f"({', '.join(sorted(REASONS))})"
                )
            rejected[k] = reason
        all_pod: set[str] = set(pod)
    else:
        _keys(expect, VMAP_EXPECT_KEYS, "expect (vmap)")
        if "breaks" not in expect or not isinstance(expect["breaks"], list):
            raise CaseFileError("expect.breaks: required, an array with one pod per break")
        breaks = tuple(_key_list(b, f"expect.breaks[{i}]") for i, b in enumerate(expect["breaks"]))
        if "inline" in query:
            raise CaseFileError("query: vmap cases must not set 'inline' (the runner sets 1)")
        all_pod = {k for b in breaks for k in b}
    not_in_pod = _key_list(expect.get("not_in_pod", []), "expect.not_in_pod")

    known = _known_candidates(catalog)
    mentioned = [*all_pod, *rejected, *not_in_pod]
    for k in mentioned:
        if k not in known:
            raise CaseFileError(
                f"expect mentions {k!r}, which is not a line_item/creative pair of the catalog"
            )
    for k in [*rejected, *not_in_pod]:
        if k in all_pod:
            raise CaseFileError(f"expect: {k!r} is both in the pod and expected out of it")

    return Case(
        name=name,
        description=description,
        catalog=catalog,
        now=now,
        query=query,
        headers=headers,
        sessions=tuple(sessions),
        settings=settings,
        endpoint=endpoint,
        pod=pod,
        breaks=breaks,
        rejected=rejected,
        not_in_pod=not_in_pod,
        xfail=xfail,
    )


def load_case(path: Path) -> Case:
    return parse_case(_read_json(path), path.stem)


def case_files() -> list[Path]:
    return sorted(p for p in CASES_DIR.glob("*.json") if p.is_file())


def _params() -> list[Any]:
    out = []
    for path in case_files():
        marks = []
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            reason = raw.get("xfail") if isinstance(raw, dict) else None
        except (OSError, ValueError):
            reason = None  # the test itself reports the malformed file
        if isinstance(reason, str) and reason.strip():
            # Only a CaseMismatch counts as the expected failure: a malformed case still fails,
            # and a case that starts passing fails as XPASS(strict).
            marks.append(pytest.mark.xfail(reason=reason, strict=True, raises=CaseMismatch))
        out.append(pytest.param(path, id=path.stem, marks=marks))
    return out


# --------------------------------------------------------------------------- running cases


def _localname(el: Any) -> str:
    return str(etree.QName(el).localname)


def _vast_pod(vast: Any) -> list[str]:
    """``line_item/creative`` keys of a VAST document's ads, in ``sequence`` order."""
    ads = []
    for ad in vast.iter("{*}Ad"):
        creative = next(ad.iter("{*}Creative"), None)
        if creative is None:
            raise CaseMismatch(f"<Ad id={ad.get('id')!r}> has no <Creative>")
        cr = creative.get("id", "")
        ad_id = ad.get("id", "")
        suffix = f"-{cr}"
        if not ad_id.endswith(suffix):
            raise CaseMismatch(f"<Ad id={ad_id!r}> does not end with its creative id {cr!r}")
        ads.append((int(ad.get("sequence", "1")), f"{ad_id[: -len(suffix)]}/{cr}"))
    return [k for _, k in sorted(ads)]


def _fail(case: Case, problems: list[str], shown: str) -> None:
    if problems:
        raise CaseMismatch(
            f"case {case.name}: {case.description}\n"
            + "\n".join(f"  - {p}" for p in problems)
            + f"\n\n{shown}"
        )


async def _replay_sessions(client: Any, case: Case) -> None:
    for n, (query, headers) in enumerate(case.sessions):
        resp = await client.get("/vast", params=query, headers=headers)
        if resp.status != 200:
            raise CaseMismatch(
                f"case {case.name}: sessions[{n}] /vast answered {resp.status}: "
                f"{(await resp.text())[:500]}"
            )
        await resp.read()


async def _run_decide(client: Any, case: Case) -> list[str]:
    """Check ``/decide`` against the expectation; return the pod it chose."""
    resp = await client.get("/decide", params=case.query, headers=case.headers)
    body = await resp.text()
    if resp.status != 200:
        raise CaseMismatch(f"case {case.name}: /decide answered {resp.status}: {body}")
    data = json.loads(body)
    shown = "decision JSON:\n" + json.dumps(data, indent=2, sort_keys=True)
    problems: list[str] = []

    ads = data["pod"]["ads"]
    slots = [a["slot"] for a in ads]
    if slots != list(range(1, len(ads) + 1)):
        problems.append(f"pod slots are {slots}, expected 1..{len(ads)} in order")
    actual = [f"{a['line_item_id']}/{a['creative_id']}" for a in ads]
    if actual != list(case.pod or ()):
        problems.append(f"pod is {actual}, expected {list(case.pod or ())}")
    if data["filled"] != bool(actual):
        problems.append(f"'filled' is {data['filled']} for a pod of {len(actual)} ads")

    traces: dict[str, list[dict[str, Any]]] = {}
    for c in data["candidates"]:
        traces.setdefault(f"{c['line_item_id']}/{c['creative_id']}", []).append(c)
    for k, entries in traces.items():
        if len(entries) > 1:
            problems.append(f"{k} appears {len(entries)} times in candidates[]")
    for k in actual:
        got = traces.get(k, [{}])[0]
        if not got.get("selected"):
            problems.append(f"{k} is in the pod but its candidates[] entry is {got or 'missing'}")
    for k, reason in case.rejected.items():
        got_list = traces.get(k)
        if not got_list:
            problems.append(f"{k}: expected rejection {reason!r}, but it is not in candidates[]")
            continue
        got = got_list[0]
        if got["selected"] or got["reason"] != reason:
            problems.append(
                f"{k}: expected rejection {reason!r} (stage {Reason(reason).stage.value!r}), "
                f"got reason {got['reason']!r} (stage {got['stage']!r}, selected "
                f"{got['selected']})"
            )
    for k in case.not_in_pod:
        if k in actual:
            problems.append(f"{k} must not be in the pod")
    _fail(case, problems, shown)
    return actual


async def _check_vast(client: Any, case: Case, decided: list[str]) -> None:
    """``/vast`` (on a fresh app, after the same earlier requests) serves the same pod as a
    valid 200 VAST document; a no-fill is an empty VAST."""
    resp = await client.get("/vast", params=case.query, headers=case.headers)
    xml = await resp.read()
    if resp.status != 200:
        raise CaseMismatch(f"case {case.name}: /vast answered {resp.status}: {xml[:500]!r}")
    root = etree.fromstring(xml)
    if _localname(root) != "VAST":
        raise CaseMismatch(f"case {case.name}: /vast root element is <{_localname(root)}>")
    served = _vast_pod(root)
    if served != decided:
        raise CaseMismatch(
            f"case {case.name}: /vast served {served} but /decide chose {decided}\n\n"
            + xml.decode(errors="replace")
        )


async def _run_vmap(client: Any, case: Case) -> None:
    resp = await client.get("/vmap", params={**case.query, "inline": "1"}, headers=case.headers)
    xml = await resp.read()
    if resp.status != 200:
        raise CaseMismatch(f"case {case.name}: /vmap answered {resp.status}: {xml[:500]!r}")
    root = etree.fromstring(xml)
    got: list[list[str]] = []
    summary: list[str] = []
    for b in root.iterfind(f"{{{VMAP_NS}}}AdBreak"):
        vast = next(b.iter("{*}VAST"), None)
        pod = [] if vast is None else _vast_pod(vast)
        got.append(pod)
        summary.append(f"  {b.get('breakId')} @ {b.get('timeOffset')}: {pod}")
    shown = "VMAP breaks served:\n" + "\n".join(summary)
    problems: list[str] = []
    expected = [list(b) for b in case.breaks or ()]
    if len(got) != len(expected):
        problems.append(f"{len(got)} breaks scheduled, the case expects {len(expected)}")
    for n, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            problems.append(f"break {n}: pod is {g}, expected {e}")
    served = {k for pod in got for k in pod}
    for k in case.not_in_pod:
        if k in served:
            problems.append(f"{k} must not be served in any break")
    _fail(case, problems, shown)


@pytest.mark.parametrize("path", _params())
async def test_decision_case(
    path: Path, tmp_path: Path, make_client: ClientFactory, clock: FakeClock
) -> None:
    case = load_case(path)
    catalog_path = tmp_path / "catalog.json"
    catalog_path.write_text(json.dumps(case.catalog, indent=1), encoding="utf-8")
    clock.now = case.now
    client = await make_client(seed=SEED, catalog=str(catalog_path), **case.settings)
    await _replay_sessions(client, case)
    if case.endpoint == "vmap":
        await _run_vmap(client, case)
        return
    decided = await _run_decide(client, case)
    # /decide reserves frequency caps and budgets like /vast, so /vast gets its own fresh app.
    fresh = await make_client(seed=SEED, catalog=str(catalog_path), **case.settings)
    await _replay_sessions(fresh, case)
    await _check_vast(fresh, case, decided)


# --------------------------------------------------------------------------- the runner itself


def test_enough_cases() -> None:
    assert len(case_files()) >= MIN_CASES, f"only {len(case_files())} decision cases"


def test_base_catalogs_are_valid() -> None:
    for path in sorted(BASES_DIR.glob("*.json")):
        parse_catalog(_read_json(path), source=str(path))


GOOD: dict[str, Any] = {
    "description": "a valid case",
    "catalog": {"base": "minimal"},
    "query": {"pod_duration": "30"},
    "expect": {"pod": ["li-auto/cr-auto-30"]},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unknown key"),
        ({"description": ""}, "non-empty string"),
        ({"query": {"pod_duration": 30}}, "values must be strings"),
        ({"now": "2026-11-25T20:00:00"}, "UTC offset"),
        ({"endpoint": "vast"}, "endpoint"),
        ({"expect": {"pod": [], "rejectd": {}}}, "unknown key"),
        ({"expect": {"pod": ["li-auto"]}}, "line_item/creative"),
        ({"expect": {"pod": ["li-nope/cr-auto-30"]}}, "not a line_item/creative pair"),
        ({"expect": {"pod": [], "rejected": {"li-auto/cr-auto-30": "kids"}}}, "Reason value"),
        ({"expect": {"pod": ["li-auto/cr-auto-30"], "not_in_pod": ["li-auto/cr-auto-30"]}}, "both"),
        ({"expect": {"rejected": {}}}, "'pod' is required"),
        ({"catalog": {"base": "nope"}}, "no base named"),
        ({"catalog": {"base": "minimal", "patch": {"drop": {}}}}, "unknown key"),
        ({"catalog": {"base": "minimal", "patch": {"remove": {"line_items": ["li-x"]}}}}, "li-x"),
        (
            {"catalog": {"base": "minimal", "patch": {"replace": {"line_items": {"li-x": {}}}}}},
            "li-x",
        ),
        (
            {
                "catalog": {
                    "base": "minimal",
                    "patch": {"replace": {"line_items": {"li-auto": {"tier": "premium"}}}},
                }
            },
            "catalog is invalid",
        ),
        ({"endpoint": "vmap", "expect": {"pod": []}}, "unknown key"),
        ({"endpoint": "vmap", "query": {"inline": "1"}, "expect": {"breaks": []}}, "inline"),
        ({"sessions": [{"qurey": {}}]}, "unknown key"),
        ({"sessions": {"query": {}}}, "expected an array"),
    ],
)
def test_malformed_cases_are_rejected(change: dict[str, Any], message: str) -> None:
    parse_case(GOOD, "good")
    with pytest.raises(CaseFileError, match=message):
        parse_case({**GOOD, **change}, "bad")


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    p = tmp_path / "dup.json"
    p.write_text('{"description": "a", "description": "b"}', encoding="utf-8")
    with pytest.raises(CaseFileError, match="more than once"):
        load_case(p)
