"""Conformance harness: check VAST / VMAP documents against things we did not write.

Three independent judges:

* the IAB XSDs in ``<project>/../shared/spec/xsd`` (lxml / libxml2, offline);
* ``vastlint`` (PyPI, a rule-based VAST/VMAP linter with a Rust core);
* the real player-side parsers ``@dailymotion/vast-client`` and ``@dailymotion/vmap``
  run by Node (``tests/node/parse.mjs``).

The XSDs and samples are third-party data shared by the team; they are never copied into
the project. They are looked up in ``$VASTSERVER_SPEC_DIR`` (the ``spec`` directory itself,
containing ``xsd/`` and ``samples/``) or else in ``<project>/../shared/spec``. Use
:func:`require_spec` / :func:`require_node` (or the ``node_parse_*`` functions, which call
it) in tests so that a machine without them skips with a clear reason.

Typical use in a test::

    from tests.support import conformance as c

    errors = c.validate_vast_xsd(body, "4.2")
    assert errors == []
    lint_errors, lint_warnings = c.vastlint_report(body.decode())
    assert lint_errors == [] and lint_warnings == []
    parsed = c.node_parse_vast(body.decode())
    assert parsed["ok"] and len(parsed["ads"]) == 2
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

__all__ = [
    "KNOWN_VAST_VERSIONS",
    "LEGACY_VMAP_NS",
    "NODE_DIR",
    "PROJECT_ROOT",
    "SHARED_SPEC",
    "SPEC_ENV_VAR",
    "UNAVOIDABLE_CLIENT_WARNINGS",
    "VAST_NS",
    "VMAP_NS",
    "assert_vast_conformant",
    "assert_vmap_conformant",
    "detect_vast_version",
    "expand_macros",
    "map_legacy_vmap_namespace",
    "node_available",
    "node_parse_many",
    "node_parse_vast",
    "node_parse_vmap",
    "require_node",
    "require_spec",
    "sample_bytes",
    "sample_path",
    "validate_vast_xsd",
    "validate_vmap_xsd",
    "vastlint_report",
    "vastlint_result",
    "xsd_for_vast",
]

# --------------------------------------------------------------------------- locations

#: project root = parent of ``tests/``
PROJECT_ROOT: Path = Path(__file__).resolve().parents[2]
SPEC_ENV_VAR = "VASTSERVER_SPEC_DIR"
_DEFAULT_SPEC = PROJECT_ROOT.parent / "shared" / "spec"


def _locate_spec() -> Path | None:
    override = os.environ.get(SPEC_ENV_VAR)
    candidate = Path(override).expanduser() if override else _DEFAULT_SPEC
    if (candidate / "xsd").is_dir():
        return candidate.resolve()
    return None


#: ``<project>/../shared/spec`` (or ``$VASTSERVER_SPEC_DIR``); ``None`` when absent.
SHARED_SPEC: Path | None = _locate_spec()


def _spec_missing_reason() -> str:
    override = os.environ.get(SPEC_ENV_VAR)
    where = f"${SPEC_ENV_VAR}={override}" if override else str(_DEFAULT_SPEC)
    return (
        f"IAB VAST/VMAP conformance material not found at {where} "
        f"(expected ../shared/spec next to the project, with xsd/ and samples/; "
        f"or set {SPEC_ENV_VAR})"
    )


def require_spec() -> Path:
    """Return :data:`SHARED_SPEC`, or skip the calling test when it is absent."""
    if SHARED_SPEC is None:
        pytest.skip(_spec_missing_reason())
    return SHARED_SPEC


def sample_path(relative: str) -> Path:
    """Path of a shared sample, e.g. ``sample_path("iab/vast4.2/Wrapper_Tag-test.xml")``.

    Skips when the whole spec directory is absent; a missing file inside a present one is an
    error (FileNotFoundError), not a skip.
    """
    path = require_spec() / "samples" / relative
    if not path.is_file():
        raise FileNotFoundError(f"shared sample {relative} not found under {path.parent}")
    return path


def sample_bytes(relative: str) -> bytes:
    return sample_path(relative).read_bytes()


# --------------------------------------------------------------------------- XSD

VAST_NS = "http://www.iab.com/VAST"
VMAP_NS = "http://www.iab.net/videosuite/vmap"
#: FreeWheel-era namespace used by some public VMAP samples (etf1, dailymotion)
LEGACY_VMAP_NS = "http://www.iab.net/vmap-1.0"

_VAST_XSD: dict[str, str] = {
    "2.0": "vast_2.0.1.xsd",
    "3.0": "vast3_draft.xsd",
    "4.0": "vast4.xsd",
    "4.1": "vast_4.1.xsd",
    "4.2": "vast_4.2.xsd",
    # No VAST 4.3 XSD exists (IAB placeholder is 1 byte); IAB states 4.3 made no structural
    # change and its XSD "is intentionally aligned with vast_4.2.xsd" (see SOURCES.md).
    "4.3": "vast_4.2.xsd",
}
KNOWN_VAST_VERSIONS: tuple[str, ...] = tuple(_VAST_XSD)
_VMAP_ENVELOPE_XSD = "vmap_1.0_envelope-only.xsd"


def _normalise_version(version: str) -> str:
    v = version.strip()
    if v in _VAST_XSD:
        return v
    # "2", "4.2.0", "2.0.1" -> major.minor
    parts = v.split(".")
    if parts and parts[0].isdigit():
        key = f"{parts[0]}.{parts[1] if len(parts) > 1 and parts[1].isdigit() else '0'}"
        if key in _VAST_XSD:
            return key
    raise ValueError(f"no XSD for VAST version {version!r}; known: {', '.join(_VAST_XSD)}")


def xsd_for_vast(version: str) -> Path:
    """XSD file for a VAST version ("2.0", "3.0", "4.0", "4.1", "4.2", "4.3")."""
    name = _VAST_XSD[_normalise_version(version)]
    return require_spec() / "xsd" / name


def _xml_parser() -> etree.XMLParser:
    # Never touch the network, never expand external entities.
    return etree.XMLParser(no_network=True, resolve_entities=False, huge_tree=False)


@functools.cache
def _schema(path: str) -> etree.XMLSchema:
    """Compile (once per process) the XSD at ``path``. Compilation is slow."""
    doc = etree.parse(path, _xml_parser())
    return etree.XMLSchema(doc)


_MACRO_RE = re.compile(r"\[([A-Za-z][A-Za-z0-9_]*)\]")
# Plausible, URL-safe values a player would substitute. Anything else -> "0".
_MACRO_VALUES: dict[str, str] = {
    "ERRORCODE": "900",
    "ERROR_CODE": "900",
    "CACHEBUSTING": "12345678",
    "TIMESTAMP": "2024-01-01T00%3A00%3A00.000Z",
    "CONTENTPLAYHEAD": "00%3A00%3A05.000",
    "MEDIAPLAYHEAD": "00%3A00%3A05.000",
    "ADPLAYHEAD": "00%3A00%3A05.000",
    "BREAKPOSITION": "1",
    "ADCOUNT": "1",
    "PODSEQUENCE": "1",
    "REASON": "1",
    "ASSETURI": "https%3A%2F%2Fcdn.example.com%2Fad.mp4",
    "PAGEURL": "https%3A%2F%2Fexample.com%2F",
    "DOMAIN": "example.com",
    "LIMITADTRACKING": "0",
    "GDPRCONSENT": "0",
    "IFA": "00000000-0000-0000-0000-000000000000",
    "IFATYPE": "unknown",
    "DEVICEUA": "Mozilla%2F5.0",
}


def _expand_text(text: str) -> str:
    return _MACRO_RE.sub(lambda m: _MACRO_VALUES.get(m.group(1).upper(), "0"), text)


def _expand_tree(root: etree._Element) -> None:
    for el in root.iter():
        if isinstance(el.tag, str):  # skip comments / PIs for .text
            if el.text and "[" in el.text:
                el.text = _expand_text(el.text)
            for name, value in el.attrib.items():
                if "[" in value:
                    el.set(name, _expand_text(value))
        if el.tail and "[" in el.tail:
            el.tail = _expand_text(el.tail)


def expand_macros(xml: bytes) -> bytes:
    """Replace every ``[MACRO]`` in text and attribute values the way a player would.

    libxml2 rejects raw ``[``/``]`` in ``xs:anyURI`` values, so documents must be validated
    after expansion (``[ERRORCODE]`` -> ``900``, ``[CACHEBUSTING]`` -> ``12345678``,
    ``[TIMESTAMP]`` -> percent-escaped ISO-8601, any other macro -> ``0``).
    """
    root = etree.fromstring(xml, _xml_parser())
    _expand_tree(root)
    out: bytes = etree.tostring(root, encoding="UTF-8", xml_declaration=True)
    return out


def _parse(xml: bytes) -> tuple[etree._Element | None, list[str]]:
    try:
        return etree.fromstring(xml, _xml_parser()), []
    except etree.XMLSyntaxError as exc:
        return None, [f"XML not well-formed: {exc}"]


def _schema_errors(schema: etree.XMLSchema, root: etree._Element, label: str) -> list[str]:
    if schema.validate(etree.ElementTree(root)):
        return []
    prefix = f"{label}: " if label else ""
    return [f"{prefix}line {e.line}: {e.message}" for e in schema.error_log]


def _split_vast3_creative_extensions(root: etree._Element, label: str) -> list[str]:
    """Remove ``Creative/CreativeExtensions`` (VAST 3.0, no namespace) and check its shape.

    The VAST 3.0 spec, the IAB CTV Addendum 2024 (``CreativeExtension type="UniversalAdId"``
    / ``"Mezzanine"``), vastlint and the vast-client all place ``<CreativeExtensions>`` under
    ``<Creative>``; the Google-prepared ``vast3_draft.xsd`` only allows it under ``<Linear>``
    (where vastlint reports ``VAST-2.0-linear-unknown-child``). So the element is checked
    here (only ``<CreativeExtension type="...">`` children, at most one per Creative) and
    removed before the XSD sees the rest of the document.
    """
    errors: list[str] = []
    prefix = f"{label}: " if label else ""
    for creative in list(root.iter("Creative")):
        found = creative.findall("CreativeExtensions")
        if len(found) > 1:
            errors.append(f"{prefix}line {creative.sourceline}: more than one CreativeExtensions")
        for ext in found:
            for child in ext:
                if not isinstance(child.tag, str):
                    continue
                if child.tag != "CreativeExtension":
                    errors.append(
                        f"{prefix}line {child.sourceline}: CreativeExtensions may only "
                        f"contain CreativeExtension, not {child.tag!r}"
                    )
                elif not child.get("type"):
                    errors.append(
                        f"{prefix}line {child.sourceline}: CreativeExtension without type"
                    )
            creative.remove(ext)
    return errors


def _validate_vast_element(
    root: etree._Element,
    version: str,
    label: str = "",
    *,
    vast3_creative_extensions: bool = False,
) -> list[str]:
    """Validate a (standalone, already macro-expanded) VAST element tree."""
    norm = _normalise_version(version)
    expected_ns = VAST_NS if norm.startswith("4.") else None
    actual_ns = etree.QName(root).namespace
    hints: list[str] = []
    if actual_ns != expected_ns:
        want = f'xmlns="{expected_ns}"' if expected_ns else "no namespace"
        hints.append(
            f"{label + ': ' if label else ''}root namespace is {actual_ns!r}; "
            f"the VAST {norm} XSD expects {want}"
        )
    pre: list[str] = []
    if vast3_creative_extensions and norm == "3.0":
        pre = _split_vast3_creative_extensions(root, label)
    errors = pre + _schema_errors(_schema(str(xsd_for_vast(norm))), root, label)
    return hints + errors if errors else []


def validate_vast_xsd(
    xml: bytes, version: str, *, vast3_creative_extensions: bool = False
) -> list[str]:
    """Validate a VAST document with the IAB XSD for ``version``; ``[]`` means valid.

    Macros are expanded first (see :func:`expand_macros`). VAST 4.x documents must carry
    ``xmlns="http://www.iab.com/VAST"``; VAST 2.0/3.0 documents no namespace.

    ``vast3_creative_extensions=True`` (VAST 3.0 only) accepts ``Creative/CreativeExtensions``
    as placed by the VAST 3.0 spec and the IAB CTV Addendum 2024 although the draft XSD does
    not: see :func:`_split_vast3_creative_extensions`. Everything else stays strict.
    """
    root, errors = _parse(xml)
    if root is None:
        return errors
    _expand_tree(root)
    return _validate_vast_element(
        root, version, vast3_creative_extensions=vast3_creative_extensions
    )


def detect_vast_version(xml: bytes) -> str:
    """The ``version`` attribute of a VAST document's root."""
    root = etree.fromstring(xml, _xml_parser())
    version: str | None = root.get("version")
    if not version:
        raise ValueError("root element has no version attribute")
    return version


def map_legacy_vmap_namespace(xml: bytes) -> bytes:
    """Rewrite the FreeWheel-era ``http://www.iab.net/vmap-1.0`` namespace to the IAB one."""
    return xml.replace(LEGACY_VMAP_NS.encode(), VMAP_NS.encode())


def validate_vmap_xsd(xml: bytes, *, vast3_creative_extensions: bool = False) -> list[str]:
    """Validate a VMAP 1.0 document; ``[]`` means valid.

    The envelope is checked with ``vmap_1.0_envelope-only.xsd`` (namespace
    ``http://www.iab.net/videosuite/vmap``); every VAST document embedded in
    ``vmap:VASTAdData`` is then extracted as a standalone document (namespaces kept) and
    validated with the XSD of its own ``version`` attribute (``vast3_creative_extensions``
    as in :func:`validate_vast_xsd`).
    """
    root, errors = _parse(xml)
    if root is None:
        return errors
    _expand_tree(root)
    schema = _schema(str(require_spec() / "xsd" / _VMAP_ENVELOPE_XSD))
    errors = _schema_errors(schema, root, "VMAP envelope")
    for index, data in enumerate(root.iter(f"{{{VMAP_NS}}}VASTAdData")):
        brk = data.getparent().getparent() if data.getparent() is not None else None
        break_id = brk.get("breakId") if brk is not None else None
        label = f"VASTAdData[{index}]" + (f" (breakId={break_id})" if break_id else "")
        children = [c for c in data if isinstance(c.tag, str)]
        if len(children) != 1 or etree.QName(children[0]).localname != "VAST":
            errors.append(f"{label}: must contain exactly one <VAST> element (not CDATA)")
            continue
        # deepcopy keeps the in-scope namespace declarations: a standalone document.
        vast = copy.deepcopy(children[0])
        version = vast.get("version")
        if not version:
            errors.append(f"{label}: embedded <VAST> has no version attribute")
            continue
        try:
            errors.extend(
                _validate_vast_element(
                    vast, version, label, vast3_creative_extensions=vast3_creative_extensions
                )
            )
        except ValueError as exc:
            errors.append(f"{label}: {exc}")
    return errors


# --------------------------------------------------------------------------- vastlint


def vastlint_result(xml: str | bytes) -> Any:
    """Raw ``vastlint.validate`` result (a ``vastlint.Result``)."""
    try:
        import vastlint
    except ImportError:  # pragma: no cover - dev dependency
        pytest.skip("vastlint is not installed (pip install -e '.[dev]')")
    return vastlint.validate(xml)


def vastlint_report(xml: str | bytes) -> tuple[list[str], list[str]]:
    """Lint a VAST or VMAP document with vastlint; returns ``(errors, warnings)``.

    ``vastlint.validate(xml)`` (vastlint 0.16.x) returns a frozen dataclass
    ``vastlint.Result(version: str | None, issues: list[Issue], summary: Summary)`` where
    ``Issue(id, severity, message, path, spec_ref, line, col)`` has ``severity`` in
    ``{"error", "warning", "info"}`` and ``Summary(errors, warnings, infos, valid)``;
    ``Result.valid`` is ``summary.valid`` (no errors). ``version`` is the VAST version it
    detected (``None`` for VMAP). Infos are left out here; use :func:`vastlint_result`.

    Each entry reads ``"<rule id> <path>: <message>"``, e.g.
    ``"VAST-4.1-adservingid-present /VAST/Ad[0]/InLine: <InLine> is missing ..."``.
    """
    result = vastlint_result(xml)
    errors: list[str] = []
    warnings: list[str] = []
    for issue in result.issues:
        text = f"{issue.id} {issue.path or '-'}: {issue.message}"
        if issue.severity == "error":
            errors.append(text)
        elif issue.severity == "warning":
            warnings.append(text)
    return errors, warnings


# --------------------------------------------------------------------------- node

NODE_DIR: Path = PROJECT_ROOT / "tests" / "node"
_PARSE_SCRIPT = NODE_DIR / "parse.mjs"
_NODE_MODULES = ("@dailymotion/vast-client", "@dailymotion/vmap", "@xmldom/xmldom")
_NODE_TIMEOUT = 120


def _node_missing_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed: player-library (vast-client/vmap) checks skipped"
    missing = [m for m in _NODE_MODULES if not (NODE_DIR / "node_modules" / m).is_dir()]
    if missing:
        return (
            f"npm modules {', '.join(missing)} missing: run `npm install` in {NODE_DIR} "
            "(`make node-deps`)"
        )
    return None


@functools.cache
def node_available() -> bool:
    """True when ``node`` and the pinned npm modules in ``tests/node`` are installed."""
    return _node_missing_reason() is None


def require_node() -> None:
    """Skip the calling test when node or the npm modules are missing."""
    if not node_available():
        pytest.skip(_node_missing_reason() or "node unavailable")


def _as_text(xml: str | bytes) -> str:
    return xml.decode("utf-8-sig") if isinstance(xml, bytes) else xml


def _run_node(mode: str, payload: str) -> Any:
    require_node()
    proc = subprocess.run(
        ["node", str(_PARSE_SCRIPT), mode],
        input=payload.encode("utf-8"),
        capture_output=True,
        cwd=NODE_DIR,
        timeout=_NODE_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"node parse.mjs {mode} failed ({proc.returncode}): "
            f"{proc.stderr.decode('utf-8', 'replace')}"
        )
    return json.loads(proc.stdout)


def node_parse_vast(xml: str | bytes) -> dict[str, Any]:
    """Parse a VAST document with ``@dailymotion/vast-client`` (``VASTParser.parseVAST``).

    Returns ``{"ok", "error", "version", "errorURLTemplates", "ads", "warnings",
    "vastErrors", "xmlWarnings"}``. ``error`` is ``{"name", "message"}`` or ``None``;
    ``warnings`` are the library's ``VAST-warning`` messages (missing required
    elements/attributes); ``vastErrors`` its ``VAST-error`` events (``{"code", "message"}``,
    e.g. 303 for no ad; ads failing that way are dropped). Each ad:
    ``id, sequence, adType, isWrapper, vastAdTagURI, adServingId, system{value,version},
    title, description, advertiser{id,value}, pricing{value,model,currency},
    categories[{authority,value}], expires, errorURLTemplates[], impressionURLTemplates[],
    extensions[{type,children}], adVerifications (count), creatives[]``; each creative:
    ``id, adId, sequence, type ("linear"|"nonlinear"|"companion"),
    universalAdIds[{idRegistry,value}], creativeExtensions[{type,children}]`` and for linear
    ``duration (s), skipDelay, mediaFiles (count), mediaFileDetails[], mezzanine{...}|None,
    interactiveCreativeFile{fileURL,type,apiFramework,variableDuration}|None (the first
    one: the library keeps no other), trackingEvents (sorted names), clickThrough,
    clickTracking[], icons``.
    Wrappers are not followed (no network).
    """
    result: dict[str, Any] = _run_node("vast", _as_text(xml))
    return result


def node_parse_vmap(xml: str | bytes) -> dict[str, Any]:
    """Parse a VMAP document with ``@dailymotion/vmap`` (``new VMAP(xmlDocument)``).

    Returns ``{"ok", "error", "version", "adBreaks", "extensions", "vast", "xmlWarnings"}``;
    each ad break: ``timeOffset, breakType, breakId, repeatAfter, adSource{id,
    allowMultipleAds, followRedirects, adTagURI{templateType,uri}|None, vastAdData (bool),
    customAdData (bool)}|None, trackingEvents[{event,uri}], extensions (count)``. ``vast``
    holds, for every inline ``VASTAdData``, the :func:`node_parse_vast` result of the
    embedded document plus ``breakIndex`` and ``breakId``.
    """
    result: dict[str, Any] = _run_node("vmap", _as_text(xml))
    return result


def node_parse_many(
    xmls: Sequence[str | bytes], kind: str | Sequence[str] = "vast"
) -> list[dict[str, Any]]:
    """Parse many documents in ONE node process (fast); ``kind`` is "vast"/"vmap" or a
    per-document sequence of those. Results are in input order, shaped as
    :func:`node_parse_vast` / :func:`node_parse_vmap`."""
    kinds = [kind] * len(xmls) if isinstance(kind, str) else list(kind)
    if len(kinds) != len(xmls):
        raise ValueError("kind sequence must have one entry per document")
    for k in kinds:
        if k not in ("vast", "vmap"):
            raise ValueError(f"kind must be 'vast' or 'vmap', not {k!r}")
    if not xmls:
        return []
    payload = json.dumps(
        [{"kind": k, "xml": _as_text(x)} for k, x in zip(kinds, xmls, strict=True)]
    )
    results: list[dict[str, Any]] = _run_node("batch", payload)
    return results


# --------------------------------------------------------------------------- one-stop checks

_NO_ADSERVINGID = "Element 'InLine' missing required sub element(s) 'AdServingId'"
_NO_UNIVERSALADID = "Element 'Creative' missing required sub element(s) 'UniversalAdId'"

#: vast-client 6.4.5 ``VAST-warning`` messages that a schema-valid document of that version
#: cannot avoid: its required-element table is version-blind (``InLine`` needs
#: ``AdServingId``, ``Creative`` needs a direct ``UniversalAdId`` child), but the 2.0/3.0
#: XSDs allow neither element there and the 4.0 XSD has no ``AdServingId``. (The CTV
#: Addendum's ``UniversalAdId`` extension is not a direct child, so it does not help.)
UNAVOIDABLE_CLIENT_WARNINGS: dict[str, tuple[str, ...]] = {
    "2.0": (_NO_ADSERVINGID, _NO_UNIVERSALADID),
    "3.0": (_NO_ADSERVINGID, _NO_UNIVERSALADID),
    "4.0": (_NO_ADSERVINGID,),
    "4.1": (),
    "4.2": (),
    "4.3": (),
}


def _unexpected(items: Iterable[str], allowed: Iterable[str]) -> list[str]:
    allowed_ids = tuple(allowed)
    return [i for i in items if not i.startswith(allowed_ids)] if allowed_ids else list(items)


def _client_allowance(version: str | None, allowed: Iterable[str] | None) -> tuple[str, ...]:
    if allowed is not None:
        return tuple(allowed)
    try:
        return UNAVOIDABLE_CLIENT_WARNINGS[_normalise_version(version or "")]
    except ValueError:
        return ()


def assert_vast_conformant(
    xml: bytes,
    version: str | None = None,
    *,
    allowed_lint_warnings: Iterable[str] = (),
    allowed_client_warnings: Iterable[str] | None = None,
    parse_with_node: bool = True,
    vast3_creative_extensions: bool = False,
) -> dict[str, Any] | None:
    """Assert XSD-valid, zero vastlint errors/warnings and a clean vast-client parse.

    ``allowed_*`` are prefixes (vastlint rule ids, vast-client warning texts) tolerated for
    documented, unavoidable cases; ``allowed_client_warnings=None`` means
    :data:`UNAVOIDABLE_CLIENT_WARNINGS` for the version. Returns the node parse result
    (``None`` when node is not available or ``parse_with_node`` is false; the XSD and
    vastlint checks still ran).
    """
    version = version or detect_vast_version(xml)
    xsd_errors = validate_vast_xsd(
        xml, version, vast3_creative_extensions=vast3_creative_extensions
    )
    assert xsd_errors == [], f"VAST {version} XSD errors:\n" + "\n".join(xsd_errors)
    lint_errors, lint_warnings = vastlint_report(xml)
    assert lint_errors == [], "vastlint errors:\n" + "\n".join(lint_errors)
    bad = _unexpected(lint_warnings, allowed_lint_warnings)
    assert bad == [], "vastlint warnings:\n" + "\n".join(bad)
    if not parse_with_node or not node_available():
        return None
    parsed = node_parse_vast(xml)
    assert parsed["ok"], f"vast-client failed: {parsed['error']}"
    allowed = _client_allowance(version, allowed_client_warnings)
    bad = _unexpected(parsed["warnings"] + parsed["xmlWarnings"], allowed)
    assert bad == [], "vast-client warnings:\n" + "\n".join(bad)
    return parsed


def assert_vmap_conformant(
    xml: bytes,
    *,
    allowed_lint_warnings: Iterable[str] = (),
    allowed_client_warnings: Iterable[str] | None = None,
    parse_with_node: bool = True,
    vast3_creative_extensions: bool = False,
) -> dict[str, Any] | None:
    """VMAP counterpart of :func:`assert_vast_conformant` (embedded VAST included)."""
    xsd_errors = validate_vmap_xsd(xml, vast3_creative_extensions=vast3_creative_extensions)
    assert xsd_errors == [], "VMAP XSD errors:\n" + "\n".join(xsd_errors)
    lint_errors, lint_warnings = vastlint_report(xml)
    assert lint_errors == [], "vastlint errors:\n" + "\n".join(lint_errors)
    bad = _unexpected(lint_warnings, allowed_lint_warnings)
    assert bad == [], "vastlint warnings:\n" + "\n".join(bad)
    if not parse_with_node or not node_available():
        return None
    parsed = node_parse_vmap(xml)
    assert parsed["ok"], f"vmap-js failed: {parsed['error']}"
    for vast in parsed["vast"]:
        assert vast["ok"], f"vast-client failed on embedded VAST: {vast['error']}"
        allowed = _client_allowance(vast["version"], allowed_client_warnings)
        bad = _unexpected(vast["warnings"] + vast["xmlWarnings"], allowed)
        assert bad == [], "vast-client warnings (embedded VAST):\n" + "\n".join(bad)
    return parsed
