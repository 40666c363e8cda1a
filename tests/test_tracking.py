"""Tests for vastserver.tracking: signed ad tokens, tracking URLs, macros, beacon parsing."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vastserver import tracking
from vastserver.tracking import (
    DEFAULT_MACRO_VALUES,
    EVENTS,
    LINEAR_EVENTS,
    MAX_CLOCK_SKEW_S,
    MAX_TOKEN_LEN,
    VMAP_BREAK_EVENTS,
    AdToken,
    BeaconParams,
    Keyring,
    TokenError,
    TokenErrorKind,
    TrackingUrls,
    expand_macros,
    new_ad_serving_id,
    new_ad_serving_ids,
    parse_beacon_query,
    sign,
    verify,
    viewer_hash,
)

SECRET_A = "test-secret-aaaaaaaaaaaaaaaaaaaaaaaa"
SECRET_B = "test-secret-bbbbbbbbbbbbbbbbbbbbbbbb"
NOW = 1_714_560_000
MAX_AGE = 3600
KEYRING = Keyring.from_secrets([SECRET_A])
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
MACRO_RE = re.compile(r"\[([A-Z]+)\]")


def make_token(**overrides: object) -> AdToken:
    fields: dict[str, object] = {
        "ad_serving_id": new_ad_serving_id(random.Random(7)),
        "line_item_id": "4821",
        "creative_id": "10293",
        "campaign_id": "377",
        "advertiser_id": "52",
        "viewer_hash": viewer_hash("AEBE52E7-03EE-455A-B3C4-E57283966239", KEYRING),
        "price_micros": 12_500_000,
        "served_at": NOW,
        "pod_position": 2,
        "session": "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab",
        "click_url": "https://www.example-brand.com/ctv?utm_source=vast&cmp=377",
        "lmt": False,
    }
    fields.update(overrides)
    return AdToken(**fields)  # type: ignore[arg-type]


TOKEN = make_token()
SIGNED = sign(TOKEN, KEYRING, "impression")


def kind_of(s: str, keyring: Keyring = KEYRING, now: int = NOW) -> TokenErrorKind | None:
    try:
        verify(s, keyring, now, MAX_AGE, "impression")
    except TokenError as exc:
        return exc.kind
    return None


# --------------------------------------------------------------------------------------------
# Round trip and format
# --------------------------------------------------------------------------------------------


def test_round_trip() -> None:
    assert verify(SIGNED, KEYRING, NOW, MAX_AGE, "impression") == TOKEN


def test_round_trip_lmt_and_empty_strings() -> None:
    token = make_token(lmt=True, session="", click_url="", price_micros=0, pod_position=1)
    assert verify(sign(token, KEYRING, "impression"), KEYRING, NOW, MAX_AGE, "impression") == token


SIGNED_BEFORE_TEST_FLAG = (
    "AgGCAWUTJw4mng038qdN5FLmtDgD1SUDtVAD-QIDNEEK5tm9C3tlawRvHC0-S1pMbY5_ASNFZ4mr7QJleGFtcGxl"
    "LWJyYW5kLmNvbS9jdHY_dXRtX3NvdXJjZT12YXN0JmNtcD0zNzeg-PoFgLjIsQYC.a92df7.OVO6oNfC6HUQHCHYzqdgZQ"
)
"""``make_token(lmt=True)`` signed for ``impression`` by the code before the test flag."""


def test_test_flag_round_trips_and_old_tokens_still_verify() -> None:
    """OpenRTB ``test`` = 1 ads carry flag bit 1; a token signed before that bit existed
    verifies unchanged (not a test), and a token without the flag encodes as before."""
    for lmt in (False, True):
        token = make_token(lmt=lmt, test=True)
        signed = sign(token, KEYRING, "impression")
        got = verify(signed, KEYRING, NOW, MAX_AGE, "impression")
        assert got == token and got.test and got.lmt is lmt
        assert tracking._encode_payload(token)[1] == (0x03 if lmt else 0x02)
    old = verify(SIGNED_BEFORE_TEST_FLAG, KEYRING, NOW, MAX_AGE, "impression")
    assert old == make_token(lmt=True) and old.test is False
    assert sign(make_token(lmt=True), KEYRING, "impression") == SIGNED_BEFORE_TEST_FLAG
    with pytest.raises(TypeError):
        make_token(test=1)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0",
        "007",
        "12345678901234567890",  # too big for a varint: falls back to text
        "9223372036854775807",
        "9223372036854775808",
        "deadbeef",
        "DEADBEEF",
        "abc",
        "6F1C2D3E-4B5A-4C6D-8E7F-0123456789AB",
        "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab",
        "AAAA",
        "AAB",  # non-canonical base64 (stray low bits)
        "https://www.",
        "https://x",
        "http://x",
        "https://wwwx",
        "héllo wörld ✓",
        "a.b.c",
        "\x00\n\t",
    ],
)
def test_round_trip_string_encodings(value: str) -> None:
    token = make_token(line_item_id=value, session=value, click_url=value)
    assert verify(sign(token, KEYRING, "impression"), KEYRING, NOW, MAX_AGE, "impression") == token


def test_token_shape_and_determinism() -> None:
    payload, kid, sig = SIGNED.split(".")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", payload)
    assert kid == KEYRING.primary_kid
    assert re.fullmatch(r"[0-9a-f]{6}", kid)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", sig)  # 16 bytes
    assert sign(TOKEN, KEYRING, "impression") == SIGNED
    assert sign(TOKEN, Keyring.from_secrets([SECRET_A]), "impression") == SIGNED


def test_token_length_for_realistic_values() -> None:
    assert len(SIGNED) <= 220
    # String ids instead of numeric ones, a base64-ish session, a plain click URL.
    other = make_token(
        line_item_id="li-20931",
        creative_id="cr-5512",
        campaign_id="cmp-771",
        advertiser_id="adv-42",
        session="s-8c1f02ae9d",
        click_url="https://brand.example/spring?src=ctv",
    )
    assert len(sign(other, KEYRING, "impression")) <= 220


def test_oversize_token_refused_by_sign() -> None:
    with pytest.raises(ValueError):
        sign(make_token(click_url="https://x/" + "a" * 2000), KEYRING, "impression")


def test_adtoken_validates_fields() -> None:
    with pytest.raises(ValueError):
        make_token(price_micros=-1)
    with pytest.raises(ValueError):
        make_token(pod_position=0)
    with pytest.raises(ValueError):
        make_token(served_at=2**63)
    with pytest.raises(TypeError):
        make_token(price_micros=True)
    with pytest.raises(TypeError):
        make_token(price_micros=1.5)
    with pytest.raises(TypeError):
        make_token(line_item_id=4821)
    with pytest.raises(TypeError):
        make_token(lmt=1)


def test_sign_rejects_unencodable_text() -> None:
    with pytest.raises(ValueError):
        sign(make_token(session="\ud800"), KEYRING, "impression")


# --------------------------------------------------------------------------------------------
# Keyring and rotation
# --------------------------------------------------------------------------------------------


def test_keyring_validation() -> None:
    with pytest.raises(ValueError):
        Keyring.from_secrets([])
    with pytest.raises(ValueError):
        Keyring.from_secrets([""])
    with pytest.raises(ValueError):
        Keyring.from_secrets(["short"])
    with pytest.raises(ValueError):
        Keyring.from_secrets([SECRET_A, "x" * 15])
    with pytest.raises(TypeError):
        Keyring.from_secrets(SECRET_A)
    with pytest.raises(ValueError):
        Keyring.parse("")
    with pytest.raises(ValueError):
        Keyring.parse(f"{SECRET_A},")
    with pytest.raises(ValueError):
        Keyring.parse(f"{SECRET_A},,{SECRET_B}")


def test_keyring_parse_and_repr() -> None:
    ring = Keyring.parse(f" {SECRET_B} , {SECRET_A}\n")
    assert ring.kids == Keyring.from_secrets([SECRET_B, SECRET_A]).kids
    assert ring.primary_kid == Keyring.from_secrets([SECRET_B]).primary_kid
    assert len(set(ring.kids)) == 2
    assert SECRET_A not in repr(ring) and SECRET_B not in repr(ring)
    assert Keyring.from_secrets([SECRET_A, SECRET_A]).kids == KEYRING.kids


def test_rotation() -> None:
    old = Keyring.from_secrets([SECRET_A])
    rotating = Keyring.from_secrets([SECRET_B, SECRET_A])
    rotated = Keyring.from_secrets([SECRET_B])
    old_token = sign(TOKEN, old, "impression")
    new_token = sign(TOKEN, rotating, "impression")
    assert new_token.split(".")[1] == rotated.primary_kid
    assert verify(old_token, rotating, NOW, MAX_AGE, "impression") == TOKEN
    assert verify(new_token, rotating, NOW, MAX_AGE, "impression") == TOKEN
    assert verify(new_token, rotated, NOW, MAX_AGE, "impression") == TOKEN
    assert kind_of(old_token, rotated) is TokenErrorKind.BAD_SIGNATURE
    assert kind_of(new_token, old) is TokenErrorKind.BAD_SIGNATURE


def test_foreign_signature_with_our_kid() -> None:
    # Signed with a secret we don't have, relabelled with our key id.
    payload, _, sig = sign(
        make_token(lmt=True), Keyring.from_secrets([SECRET_B]), "impression"
    ).split(".")
    assert kind_of(f"{payload}.{KEYRING.primary_kid}.{sig}") is TokenErrorKind.BAD_SIGNATURE
    # Our signature moved onto another payload.
    assert kind_of(f"{payload}.{KEYRING.primary_kid}.{SIGNED.split('.')[2]}") is (
        TokenErrorKind.BAD_SIGNATURE
    )


# --------------------------------------------------------------------------------------------
# Time
# --------------------------------------------------------------------------------------------


def test_expiry_boundaries() -> None:
    assert kind_of(SIGNED, now=NOW + MAX_AGE) is None
    assert kind_of(SIGNED, now=NOW + MAX_AGE + 1) is TokenErrorKind.EXPIRED


def test_future_boundaries() -> None:
    assert kind_of(SIGNED, now=NOW - MAX_CLOCK_SKEW_S) is None
    assert kind_of(SIGNED, now=NOW - MAX_CLOCK_SKEW_S - 1) is TokenErrorKind.FUTURE


def test_signature_checked_before_expiry() -> None:
    tampered = SIGNED[:-1] + ("A" if SIGNED[-1] != "A" else "Q")
    assert kind_of(tampered, now=NOW + 10 * MAX_AGE) is TokenErrorKind.BAD_SIGNATURE


# --------------------------------------------------------------------------------------------
# Malformed input and tampering
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "abc",
        SIGNED + ".",
        "." + SIGNED,
        SIGNED.replace(".", "", 1),
        SIGNED + "A",  # signature of wrong length
        SIGNED.split(".")[0] + "." + KEYRING.primary_kid.upper() + "." + SIGNED.split(".")[2],
        SIGNED.split(".")[0] + "=." + KEYRING.primary_kid + "." + SIGNED.split(".")[2],
        "A" * (MAX_TOKEN_LEN + 1),
        SIGNED + "A" * MAX_TOKEN_LEN,
        " " + SIGNED,
        SIGNED + "\n",
        SIGNED.replace("A", "\u0410"),
    ],
)
def test_malformed(bad: str) -> None:
    assert kind_of(bad) is TokenErrorKind.MALFORMED


def test_non_string_input() -> None:
    assert kind_of(None) is TokenErrorKind.MALFORMED  # type: ignore[arg-type]
    assert kind_of(b"x") is TokenErrorKind.MALFORMED  # type: ignore[arg-type]


@pytest.mark.parametrize("version", [0, 3, 255])
def test_bad_version_is_malformed_even_when_signed(version: int) -> None:
    payload = bytearray(tracking._encode_payload(TOKEN))
    assert payload[0] == tracking.FORMAT_VERSION == 2
    payload[0] = version
    assert kind_of(_sign_raw(bytes(payload))) is TokenErrorKind.MALFORMED


def test_unknown_kid() -> None:
    payload, _, sig = SIGNED.split(".")
    other_kid = "000000" if KEYRING.primary_kid != "000000" else "111111"
    assert kind_of(f"{payload}.{other_kid}.{sig}") is TokenErrorKind.BAD_SIGNATURE


def test_tamper_every_character() -> None:
    for i, original in enumerate(SIGNED):
        for replacement in B64_ALPHABET + ".":
            if replacement == original:
                continue
            tampered = SIGNED[:i] + replacement + SIGNED[i + 1 :]
            assert kind_of(tampered) in (
                TokenErrorKind.MALFORMED,
                TokenErrorKind.BAD_SIGNATURE,
            ), (i, replacement)


def test_tamper_every_payload_bit_even_with_valid_base64() -> None:
    payload_b64, kid, sig = SIGNED.split(".")
    raw = tracking._b64d(payload_b64)
    assert raw is not None
    for i in range(len(raw)):
        for bit in range(8):
            mutated = bytearray(raw)
            mutated[i] ^= 1 << bit
            s = f"{tracking._b64e(bytes(mutated))}.{kid}.{sig}"
            assert kind_of(s) in (TokenErrorKind.MALFORMED, TokenErrorKind.BAD_SIGNATURE)


def test_truncations_and_extensions() -> None:
    for n in range(len(SIGNED)):
        assert kind_of(SIGNED[:n]) is not None
        assert kind_of(SIGNED[n:]) is not None or n == 0
    for extra in ("A", "AA", "AAA", "AAAA", "-", "_"):
        assert kind_of(SIGNED + extra) is TokenErrorKind.MALFORMED
        payload, kid, sig = SIGNED.split(".")
        assert kind_of(f"{payload}{extra}.{kid}.{sig}") is not None


def _sign_raw(payload: bytes, keyring: Keyring = KEYRING) -> str:
    """Sign arbitrary payload bytes with a real key, bypassing the encoder (for the
    impression scope; a payload in the legacy version 1 with version 1's message)."""
    key = keyring._keys[0]
    payload_b64 = tracking._b64e(payload)
    if payload[:1] == b"\x01":
        msg = f"{payload_b64}.{key.kid}".encode("ascii")
        sig = tracking._b64e(hmac.new(key.token_key, msg, hashlib.sha256).digest()[:16])
    else:
        sig = tracking._b64e(tracking._mac(key.token_key, payload_b64, key.kid, "impression"))
    return f"{payload_b64}.{key.kid}.{sig}"


def test_validly_signed_non_canonical_payloads_are_malformed() -> None:
    raw = tracking._encode_payload(TOKEN)
    # Trailing byte.
    assert kind_of(_sign_raw(raw + b"\x00")) is TokenErrorKind.MALFORMED
    # Unknown flag bit.
    assert kind_of(_sign_raw(raw[:1] + b"\x04" + raw[2:])) is TokenErrorKind.MALFORMED
    # Over-long varint for pod_position (last byte): 2 as 0x82 0x00.
    assert raw[-1] == 2
    assert kind_of(_sign_raw(raw[:-1] + b"\x82\x00")) is TokenErrorKind.MALFORMED
    # "4821" spelled as UTF-8 instead of DEC.
    dec = bytearray([tracking._K_DEC])
    tracking._put_varint(dec, 4821)
    header = bytes(dec)
    start = raw.index(header)
    utf8 = bytes([(4 << 3) | tracking._K_UTF8]) + b"4821"
    swapped = raw[:start] + utf8 + raw[start + len(header) :]
    assert kind_of(_sign_raw(swapped)) is TokenErrorKind.MALFORMED
    # pod_position 0.
    assert kind_of(_sign_raw(raw[:-1] + b"\x00")) is TokenErrorKind.MALFORMED
    # Empty payload after version.
    assert kind_of(_sign_raw(bytes([tracking.FORMAT_VERSION]))) is TokenErrorKind.MALFORMED


# --------------------------------------------------------------------------------------------
# Byte-identical output, canonical checks and memo caches (fast sign/verify)
# --------------------------------------------------------------------------------------------

# Tokens and strings computed with the original, un-memoized implementation: the fast path
# must keep producing exactly these bytes.
GOLDEN_FIELDS: list[dict[str, object]] = [
    {
        "ad_serving_id": "q0Zb8c1Rr2Vt3Xy4Wz5A6g",
        "line_item_id": "li-000123",
        "creative_id": "cr-000123-1",
        "campaign_id": "cp-00042",
        "advertiser_id": "adv-0007",
        "viewer_hash": "9f86d081884c7d65",
        "price_micros": 12_500_000,
        "served_at": 1_714_560_000,
        "pod_position": 1,
        "session": "0123456789abcdef",
        "click_url": "",
        "lmt": False,
    },
    {
        "ad_serving_id": "AAAAAAAAAAAAAAAAAAAAAA",
        "line_item_id": "4821",
        "creative_id": "10293",
        "campaign_id": "377",
        "advertiser_id": "52",
        "viewer_hash": "deadbeefcafef00d",
        "price_micros": 0,
        "served_at": 0,
        "pod_position": 4,
        "session": "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab",
        "click_url": "https://www.example-brand.com/ctv?utm_source=vast&cmp=377",
        "lmt": True,
    },
    {
        "ad_serving_id": "_-_-",
        "line_item_id": "9223372036854775807",
        "creative_id": "9223372036854775808",
        "campaign_id": "007",
        "advertiser_id": "DEADBEEF",
        "viewer_hash": "",
        "price_micros": 2**63 - 1,
        "served_at": 2**63 - 1,
        "pod_position": 2**63 - 1,
        "session": "6F1C2D3E-4B5A-4C6D-8E7F-0123456789AB",
        "click_url": "http://brand.example/x?y=1",
        "lmt": False,
    },
    {
        "ad_serving_id": "AAB",
        "line_item_id": "héllo wörld ✓",
        "creative_id": "a.b.c",
        "campaign_id": "0",
        "advertiser_id": "abc",
        "viewer_hash": "\x00\n\t",
        "price_micros": 127,
        "served_at": 128,
        "pod_position": 3,
        "session": "https://www.",
        "click_url": "https://brand.example/spring?src=ctv",
        "lmt": True,
    },
]
GOLDEN_SIGNED_V1 = [
    "AQCCAatGW_HNUa9lbd18uFs-QOpIbGktMDAwMTIzWGNyLTAwMDEyMy0xMnKftNNONjJp2_7TTTtBn4bQgYhMfWVB"
    "ASNFZ4mrze8AoPj6BYC4yLEGAQ.a92df7.HVsXFAtL0PXGUFZTEmsElw",
    "AQGCAQAAAAAAAAAAAAAAAAAAAAAD1SUDtVAD-QIDNEHerb7vyv7wDQRvHC0-S1pMbY5_ASNFZ4mr7QJleGFtcGxl"
    "LWJyYW5kLmNvbS9jdHY_dXRtX3NvdXJjZT12YXN0JmNtcD0zNzcAAAQ.a92df7.r3eoQaPrR9vLpJBylBfpdA",
    "AQAa_-_-A___________f3L3bbffvbTfrznjvvnzTxgwMDcyDEADBEEFANoB6F1C2D3E-4B5A-4C6D-8E7F-0123"
    "456789ABnwFicmFuZC5leGFtcGxlL3g_eT0x__________9___________9___________9_.a92df7."
    "-8Pykw08uLHYzOGaaomwew",
    "AQEYQUFCiAFow6lsbG8gd8O2cmxkIOKckyhhLmIuYwMAEmm3GAAKCQXmAWJyYW5kLmV4YW1wbGUvc3ByaW5nP3Ny"
    "Yz1jdHZ_gAED.a92df7.kizkQUj7JHi8zl5aSH7Wcw",
]
GOLDEN_SIGNED_ROTATING_V1 = (
    "AQCCAatGW_HNUa9lbd18uFs-QOpIbGktMDAwMTIzWGNyLTAwMDEyMy0xMnKftNNONjJp2_7TTTtBn4bQgYhMfWVB"
    "ASNFZ4mrze8AoPj6BYC4yLEGAQ.e72a44.DaDSJcJVsO4Kp1oE6KztYg"
)


"""Tokens the original (version 1) encoder made: one tag, over ``"<payload>.<kid>"``."""


def _as_v2(v1: str, keyring: Keyring, scope: str) -> str:
    """The version 2 token of a version 1 one: the same payload bytes after the version
    byte, and the reference HMAC over ``"<payload>.<kid>.<scope>"``."""
    payload_b64, kid, _ = v1.split(".")
    raw = tracking._b64d(payload_b64)
    assert raw is not None and raw[0] == 1
    payload_b64 = tracking._b64e(bytes((2,)) + raw[1:])
    key = next(k for k in keyring._keys if k.kid == kid)
    sig = tracking._mac(key.token_key, payload_b64, kid, scope)
    return f"{payload_b64}.{kid}.{tracking._b64e(sig)}"


GOLDEN_SIGNED = [_as_v2(v1, KEYRING, "impression") for v1 in GOLDEN_SIGNED_V1]


@pytest.mark.parametrize("fields, v1", list(zip(GOLDEN_FIELDS, GOLDEN_SIGNED_V1, strict=True)))
@pytest.mark.parametrize("scope", [*tracking.BEACON_SCOPES, tracking.CLICK_SCOPE])
def test_sign_is_byte_identical_to_the_original_encoder(
    fields: dict[str, object], v1: str, scope: str
) -> None:
    """The payload is the original encoder's (but for the version byte), the tag the
    reference HMAC of the scope, and the token verifies for that scope only."""
    token = AdToken(**fields)  # type: ignore[arg-type]
    expected = _as_v2(v1, KEYRING, scope)
    for _ in range(2):  # cold, then with every string already memoized
        assert sign(token, KEYRING, scope) == expected
        assert verify(expected, KEYRING, token.served_at, MAX_AGE, scope) == token
    for other in {*tracking.BEACON_SCOPES, tracking.CLICK_SCOPE} - {scope}:
        with pytest.raises(TokenError) as e:
            verify(expected, KEYRING, token.served_at, MAX_AGE, other)
        assert e.value.kind is TokenErrorKind.BAD_SIGNATURE


@pytest.mark.parametrize("fields, v1", list(zip(GOLDEN_FIELDS, GOLDEN_SIGNED_V1, strict=True)))
def test_version_1_tokens_count_until_they_expire(fields: dict[str, object], v1: str) -> None:
    """Tokens served before the upgrade (one tag for all events) verify on any event's path
    within their age, so beacons in flight across the upgrade are counted; a version 1
    payload with a version 2 (scoped) tag, or an edited one, does not verify."""
    token = AdToken(**fields)  # type: ignore[arg-type]
    for event in ("impression", "complete", "click", "pause", "notUsed"):
        assert verify(v1, KEYRING, token.served_at, MAX_AGE, event) == token
    with pytest.raises(TokenError) as e:
        verify(v1, KEYRING, token.served_at + MAX_AGE + 1, MAX_AGE, "impression")
    assert e.value.kind is TokenErrorKind.EXPIRED
    payload_b64, kid, _ = v1.split(".")
    key = KEYRING._keys[0]
    scoped = tracking._b64e(tracking._mac(key.token_key, payload_b64, kid, "impression"))
    now = token.served_at
    assert kind_of(f"{payload_b64}.{kid}.{scoped}", now=now) is TokenErrorKind.BAD_SIGNATURE
    tampered = f"{payload_b64[:-2]}AA.{kid}.{v1.split('.')[2]}"
    assert kind_of(tampered, now=now) is not None


def test_sign_scopes_refuses_unknown_scopes() -> None:
    with pytest.raises(ValueError, match="unknown token scope 'pause'"):
        tracking.sign_scopes(TOKEN, KEYRING, ("impression", "pause"))


def test_sign_is_byte_identical_with_rotating_keyring() -> None:
    token = AdToken(**GOLDEN_FIELDS[0])  # type: ignore[arg-type]
    rotating = Keyring.from_secrets([SECRET_B, SECRET_A])
    expected = _as_v2(GOLDEN_SIGNED_ROTATING_V1, rotating, "impression")
    assert sign(token, rotating, "impression") == expected
    assert verify(GOLDEN_SIGNED[0], rotating, NOW, MAX_AGE, "impression") == token


def test_fast_mac_matches_reference_hmac() -> None:
    for keyring in (KEYRING, Keyring.from_secrets([SECRET_B])):
        key = keyring._keys[0]
        for payload_b64 in ("A", SIGNED.split(".")[0], "x" * 1500):
            for scope in tracking.BEACON_SCOPES:
                msg = f"{payload_b64}.{key.kid}.{scope}".encode("ascii")
                ref = tracking._mac(key.token_key, payload_b64, key.kid, scope)
                assert tracking._key_mac(key, msg) == ref


class _Str(str):
    __slots__ = ()


class _Int(int):
    __slots__ = ()


def test_str_and_int_subclasses_sign_like_plain_values_without_touching_caches() -> None:
    fields = dict(GOLDEN_FIELDS[0])
    for name in tracking._STRING_FIELDS:
        fields[name] = _Str(fields[name])
    token = AdToken(**fields)  # type: ignore[arg-type]
    before = tracking._encode_str.cache_info()
    assert sign(token, KEYRING, "impression") == GOLDEN_SIGNED[0]
    assert tracking._encode_str.cache_info() == before
    fields = dict(GOLDEN_FIELDS[0], price_micros=_Int(12_500_000), pod_position=_Int(1))
    assert sign(AdToken(**fields), KEYRING, "impression") == GOLDEN_SIGNED[0]  # type: ignore[arg-type]


def _str_field(text: str, kind: int = tracking._K_UTF8) -> bytes:
    """``text`` as a string field of the given UTF-8-bodied kind, canonical or not."""
    raw = text.encode("utf-8")
    header = bytearray()
    tracking._put_varint(header, (len(raw) << 3) | kind)
    return bytes(header) + raw


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    tracking._put_varint(out, value)
    return bytes(out)


def _padded(encoded_varint: bytes) -> bytes:
    """The same varint with one redundant trailing group (``... 0x80 | last, 0x00``)."""
    return encoded_varint[:-1] + bytes((encoded_varint[-1] | 0x80, 0))


def _payload_with(index: int, field: bytes) -> bytes:
    """TOKEN's canonical payload with item ``index`` (8 strings, then 3 ints) replaced."""
    parts = [_reference_encode_str(getattr(TOKEN, name)) for name in tracking._STRING_FIELDS]
    parts += [_varint_bytes(getattr(TOKEN, name)) for name in tracking._INT_FIELDS]
    parts[index] = field
    return bytes((tracking.FORMAT_VERSION, 0)) + b"".join(parts)


def _field_index(name: str) -> int:
    return (tracking._STRING_FIELDS + tracking._INT_FIELDS).index(name)


def _non_canonical_cases() -> list[tuple[str, str, bytes]]:
    b64_of_hex = tracking._b64d(TOKEN.viewer_hash)
    assert b64_of_hex is not None and len(b64_of_hex) == 12  # hex text is base64url too
    dec = _varint_bytes(4821)
    return [
        ("decimal as UTF-8", "line_item_id", _str_field("4821")),
        ("decimal, padded varint", "line_item_id", bytes((tracking._K_DEC,)) + _padded(dec)),
        ("decimal, padded header", "line_item_id", _padded(bytes((tracking._K_DEC,))) + dec),
        ("decimal as UTF-8 (campaign)", "campaign_id", _str_field("377")),
        ("hex as UTF-8", "viewer_hash", _str_field(TOKEN.viewer_hash)),
        ("hex as base64", "viewer_hash", bytes(((12 << 3) | tracking._K_B64,)) + b64_of_hex),
        ("uuid as UTF-8", "session", _str_field(TOKEN.session)),
        ("base64 as UTF-8", "ad_serving_id", _str_field(TOKEN.ad_serving_id)),
        ("https://www. as UTF-8", "click_url", _str_field(TOKEN.click_url)),
        ("https://www. as https://", "click_url", _str_field(TOKEN.click_url[8:], 6)),
        ("empty as HEX", "click_url", bytes((tracking._K_HEX,))),
        ("empty as B64", "click_url", bytes((tracking._K_B64,))),
        ("empty, padded header", "click_url", b"\x80\x00"),
        ("price, padded varint", "price_micros", _padded(_varint_bytes(TOKEN.price_micros))),
        ("served_at, padded varint", "served_at", _padded(_varint_bytes(TOKEN.served_at))),
        ("pod_position, padded varint", "pod_position", _padded(_varint_bytes(2))),
    ]


def test_payload_helper_builds_the_canonical_payload() -> None:
    assert _sign_raw(_payload_with(0, _reference_encode_str(TOKEN.ad_serving_id))) == SIGNED


@pytest.mark.parametrize("warm", [False, True])
def test_non_canonical_spellings_are_rejected(warm: bool) -> None:
    for label, name, field in _non_canonical_cases():
        payload = _payload_with(_field_index(name), field)
        s = _sign_raw(payload)
        if warm:  # the canonical token and this very spelling are both already memoized
            assert verify(SIGNED, KEYRING, NOW, MAX_AGE, "impression") == TOKEN
            kind_of(s)
        with pytest.raises(TokenError) as info:
            verify(s, KEYRING, NOW, MAX_AGE, "impression")
        # Parsed fine (any other defect has another detail); only canonicality failed.
        assert info.value.kind is TokenErrorKind.MALFORMED, label
        assert info.value.detail == "non-canonical encoding", label
    assert verify(SIGNED, KEYRING, NOW, MAX_AGE, "impression") == TOKEN


def test_error_precedence_is_unchanged() -> None:
    # A non-canonical field plus a later defect reports the later defect, as the original
    # parse-then-re-encode check did.
    non_canonical = _payload_with(_field_index("line_item_id"), _str_field("4821"))
    with pytest.raises(TokenError) as info:
        verify(_sign_raw(non_canonical + b"\x00"), KEYRING, NOW, MAX_AGE, "impression")
    assert info.value.detail == "trailing bytes"
    pod_zero = non_canonical[:-1] + b"\x00"
    with pytest.raises(TokenError) as info:
        verify(_sign_raw(pod_zero), KEYRING, NOW, MAX_AGE, "impression")
    assert info.value.detail == "bad field value"
    bad_utf8 = _payload_with(_field_index("click_url"), b"\x10\xff\xfe")
    with pytest.raises(TokenError) as info:
        verify(_sign_raw(bad_utf8), KEYRING, NOW, MAX_AGE, "impression")
    assert info.value.detail == "invalid UTF-8"


def test_memoized_decoding_still_checks_time_every_call() -> None:
    assert verify(SIGNED, KEYRING, NOW, MAX_AGE, "impression") == TOKEN
    assert kind_of(SIGNED, now=NOW + MAX_AGE + 1) is TokenErrorKind.EXPIRED
    assert kind_of(SIGNED, now=NOW - MAX_CLOCK_SKEW_S - 1) is TokenErrorKind.FUTURE
    assert verify(SIGNED, KEYRING, NOW, MAX_AGE, "impression") == TOKEN
    assert kind_of(SIGNED, keyring=Keyring.from_secrets([SECRET_B])) is (
        TokenErrorKind.BAD_SIGNATURE
    )


def test_memo_caches_are_bounded() -> None:
    caches = {
        "encode_str": tracking._encode_str,
        "decode_str": tracking._decode_str,
        "varint": tracking._varint,
        "decode_payload": tracking._decode_payload_cached,
    }
    for name, cache in caches.items():
        maxsize = cache.cache_info().maxsize
        assert maxsize is not None and 0 < maxsize <= 16384, name
    n = max(cache.cache_info().maxsize or 0 for cache in caches.values()) + 100
    rng = random.Random(11)
    for i in range(n):
        token = make_token(
            ad_serving_id=new_ad_serving_id(rng),
            viewer_hash=f"{i:016x}",
            session=f"s-{i}",
            price_micros=1_000_000 + i,
        )
        assert (
            verify(sign(token, KEYRING, "impression"), KEYRING, NOW, MAX_AGE, "impression") == token
        )
    for name, cache in caches.items():
        info = cache.cache_info()
        assert info.currsize == info.maxsize, name  # full, and no bigger


# The original (un-memoized) string encoder and strict base64 decoder, kept as references.
_REF_DEC_RE = re.compile(r"0|[1-9][0-9]{0,18}")
_REF_HEX_RE = re.compile(r"(?:[0-9a-f]{2})+")
_REF_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _reference_b64d(text: str) -> bytes | None:
    if len(text) % 4 == 1 or re.fullmatch(r"[A-Za-z0-9_-]+", text) is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return raw if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == text else None


def _reference_encode_str(value: str) -> bytes:
    out = bytearray()
    if _REF_DEC_RE.fullmatch(value) and int(value) <= 2**63 - 1:
        tracking._put_varint(out, tracking._K_DEC)
        tracking._put_varint(out, int(value))
    elif _REF_UUID_RE.fullmatch(value):
        tracking._put_varint(out, tracking._K_UUID)
        out += bytes.fromhex(value.replace("-", ""))
    elif _REF_HEX_RE.fullmatch(value):
        raw = bytes.fromhex(value)
        tracking._put_varint(out, (len(raw) << 3) | tracking._K_HEX)
        out += raw
    elif value and (b64 := _reference_b64d(value)) is not None:
        tracking._put_varint(out, (len(b64) << 3) | tracking._K_B64)
        out += b64
    else:
        kind = tracking._K_UTF8
        for prefix_kind, prefix in ((5, "https://www."), (6, "https://"), (7, "http://")):
            if value.startswith(prefix):
                kind, value = prefix_kind, value[len(prefix) :]
                break
        raw = value.encode("utf-8")
        tracking._put_varint(out, (len(raw) << 3) | kind)
        out += raw
    return bytes(out)


_any_field_text = st.one_of(
    st.text(max_size=40),
    st.text(st.sampled_from(B64_ALPHABET + "=+/"), max_size=30),
    st.text(st.sampled_from("0123456789abcdefABCDEF-"), max_size=40),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.integers(0, 2**64).map(str),
    st.sampled_from(["https://www.", "https://", "http://", "https://wwwx", ""]).flatmap(
        lambda p: st.text(max_size=20).map(lambda t: p + t)
    ),
)


@settings(max_examples=1000)
@given(_any_field_text)
def test_string_codec_matches_the_reference(text: str) -> None:
    try:
        expected = _reference_encode_str(text)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            tracking._encode_str(text)
        return
    assert tracking._encode_str(text) == expected
    assert tracking._encode_str_uncached(text) == expected
    assert tracking._decode_str(expected) == text
    assert tracking._b64d(text) == _reference_b64d(text)


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=40), _any_field_text.map(_reference_encode_str)))
def test_field_decoder_accepts_only_the_reference_encoding(field: bytes) -> None:
    try:
        got = tracking._decode_str_uncached(field)
    except (TokenError, UnicodeEncodeError):
        return
    if got is not None:
        assert _reference_encode_str(got) == field


# --------------------------------------------------------------------------------------------
# Hypothesis fuzzing
# --------------------------------------------------------------------------------------------

_token_chars = st.sampled_from(B64_ALPHABET + ".")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.text(_token_chars), st.text(_token_chars, min_size=30)))
def test_fuzz_arbitrary_text(s: str) -> None:
    kind = kind_of(s)
    assert kind is not None  # nothing random is ever a valid token
    assert isinstance(kind, TokenErrorKind)


@st.composite
def mutations(draw: st.DrawFn) -> str:
    s = SIGNED
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "swap", "truncate", "append"]))
        i = draw(st.integers(0, max(len(s) - 1, 0)))
        ch = draw(st.one_of(_token_chars, st.characters()))
        if op == "replace" and s:
            s = s[:i] + ch + s[i + 1 :]
        elif op == "insert":
            s = s[:i] + ch + s[i:]
        elif op == "delete" and s:
            s = s[:i] + s[i + 1 :]
        elif op == "swap" and len(s) > 1:
            j = draw(st.integers(0, len(s) - 1))
            chars = list(s)
            chars[i], chars[j] = chars[j], chars[i]
            s = "".join(chars)
        elif op == "truncate":
            s = s[:i]
        else:
            s = s + ch
    return s


@settings(max_examples=1000)
@given(mutations())
def test_fuzz_mutated_token(s: str) -> None:
    try:
        got = verify(s, KEYRING, NOW, MAX_AGE, "impression")
    except TokenError as exc:
        assert isinstance(exc.kind, TokenErrorKind)
        return
    # Only an identical string may verify (e.g. a swap of two equal characters).
    assert s == SIGNED
    assert got == TOKEN


@settings(max_examples=500)
@given(st.binary(max_size=300), st.booleans())
def test_fuzz_validly_signed_garbage_payload(tail: bytes, versioned: bool) -> None:
    payload = (bytes([tracking.FORMAT_VERSION]) + tail) if versioned else tail
    if not payload:
        return
    try:
        got = verify(_sign_raw(payload), KEYRING, NOW, 10**12, "impression")
    except TokenError as exc:
        assert exc.kind in (TokenErrorKind.MALFORMED, TokenErrorKind.FUTURE)
        return
    # If it decoded, it is the one canonical encoding of what it decoded to (version 1
    # payloads have version 2's layout after the version byte).
    expected = b"\x02" + payload[1:] if payload[:1] == b"\x01" else payload
    assert tracking._encode_payload(got) == expected


_ints = st.integers(0, 2**63 - 1)
_text = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[0-9a-f]{2,20}", fullmatch=True),
    st.from_regex(r"[0-9]{1,20}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_-]{1,30}", fullmatch=True),
    st.uuids().map(str),
    st.text(max_size=40).map(lambda t: "https://www." + t),
    st.text(max_size=40).map(lambda t: "http://" + t),
)


def _tokens(click_url: st.SearchStrategy[str] = _text) -> st.SearchStrategy[AdToken]:
    return st.builds(
        AdToken,
        ad_serving_id=_text,
        line_item_id=_text,
        creative_id=_text,
        campaign_id=_text,
        advertiser_id=_text,
        viewer_hash=_text,
        price_micros=_ints,
        served_at=_ints,
        pod_position=st.integers(1, 2**63 - 1),
        session=_text,
        click_url=click_url,
        lmt=st.booleans(),
    )


@settings(max_examples=500)
@given(_tokens())
def test_fuzz_round_trip_any_token(token: AdToken) -> None:
    s = sign(token, KEYRING, "impression")
    assert len(s) <= MAX_TOKEN_LEN
    assert verify(s, KEYRING, token.served_at, MAX_AGE, "impression") == token


# --------------------------------------------------------------------------------------------
# viewer_hash and ad serving ids
# --------------------------------------------------------------------------------------------


def test_viewer_hash_stable_and_keyed() -> None:
    device = "AEBE52E7-03EE-455A-B3C4-E57283966239"
    h = viewer_hash(device, KEYRING)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert viewer_hash(device, Keyring.from_secrets([SECRET_A])) == h
    assert viewer_hash(device, Keyring.from_secrets([SECRET_A, SECRET_B])) == h
    assert viewer_hash(device, Keyring.from_secrets([SECRET_B])) != h
    assert viewer_hash(device + "x", KEYRING) != h
    assert device.lower() not in h and device not in h
    assert viewer_hash("\ud800", KEYRING)  # never raises


def test_new_ad_serving_ids_batch() -> None:
    # seeded: the very ids n single calls draw (the golden files rely on it)
    rng_a, rng_b = random.Random(5), random.Random(5)
    assert new_ad_serving_ids(rng_a, 4) == [new_ad_serving_id(rng_b) for _ in range(4)]
    assert rng_a.random() == rng_b.random()  # and the generator moved on alike
    assert new_ad_serving_ids(random.Random(5), 0) == []
    # from the OS: one read split into well-formed, distinct ids
    ids = new_ad_serving_ids(random.SystemRandom(), 8)
    assert len(ids) == 8 and len(set(ids)) == 8
    for i in ids:
        assert len(i) == 22 and set(i) <= set(B64_ALPHABET)


def test_new_ad_serving_id_deterministic() -> None:
    a = [new_ad_serving_id(random.Random(1)) for _ in range(2)]
    assert a[0] == a[1]
    rng = random.Random(1)
    ids = {new_ad_serving_id(rng) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)
    assert new_ad_serving_id(random.SystemRandom())


# --------------------------------------------------------------------------------------------
# URL builder
# --------------------------------------------------------------------------------------------

URLS = TrackingUrls("https://ads.example.com")


def macros(url: str) -> list[str]:
    return MACRO_RE.findall(url)


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_event_url_macros(event: str) -> None:
    url = URLS.event(event, SIGNED)
    assert url.startswith(f"https://ads.example.com/t/{event}?tk={SIGNED}&")
    assert query(url)["tk"] == [SIGNED]
    expected = ["CACHEBUSTING", "TIMESTAMP"]
    if event in LINEAR_EVENTS:
        expected.append("ADPLAYHEAD")
    if event == "error":
        expected.append("ERRORCODE")
    assert sorted(macros(url)) == sorted(expected)
    assert "%5B" not in url and "%5D" not in url


def test_linear_events_get_playhead() -> None:
    for event in ("start", "firstQuartile", "midpoint", "thirdQuartile", "complete", "progress"):
        assert "&ph=[ADPLAYHEAD]" in URLS.event(event, SIGNED)
    for event in ("impression", "click", "creativeView", "breakStart", "error"):
        assert "ph=" not in URLS.event(event, SIGNED)


def test_required_events_present() -> None:
    required = {
        "impression", "error", "click", "loaded", "start", "firstQuartile", "midpoint",
        "thirdQuartile", "complete", "progress", "pause", "resume", "mute", "unmute", "skip",
        "closeLinear", "rewind", "playerExpand", "playerCollapse", "fullscreen",
        "exitFullscreen", "notUsed", "creativeView", "acceptInvitation", "otherAdInteraction",
        "breakStart", "breakEnd",
    }  # fmt: skip
    assert required <= EVENTS
    assert LINEAR_EVENTS <= EVENTS
    assert isinstance(EVENTS, frozenset)


def test_unknown_event_rejected() -> None:
    for bad in ("Start", "impressions", "", "start?x=1", "../c"):
        with pytest.raises(ValueError):
            URLS.event(bad, SIGNED)


def test_click_macros_are_filled_percent_encoded() -> None:
    """What /c fills in a click-through: an 8-digit cache buster, the click time with
    milliseconds and the ad serving id, each percent-encoded; a macro it cannot fill (only
    in a token signed before the loader refused it) is VAST's unknown, -1."""
    now = datetime(2026, 3, 1, 9, 5, 7, 127000, tzinfo=timezone(timedelta(hours=-5)))
    got = tracking.fill_click_macros(
        "https://b.example/?cb=[CACHEBUSTING]&ts=[TIMESTAMP]&a=[ADSERVINGID]&i=[IFA]",
        now=now,
        cachebuster=4321,
        ad_serving_id="a/b+c",
    )
    assert got == (
        "https://b.example/?cb=00004321&ts=2026-03-01T14%3A05%3A07.127%2B00%3A00&a=a%2Fb%2Bc&i=-1"
    )
    assert (
        tracking.fill_click_macros("https://b.example/", now=now, cachebuster=1, ad_serving_id="x")
        == "https://b.example/"
    )


def test_impression_error_click() -> None:
    assert URLS.impression(SIGNED) == URLS.event("impression", SIGNED)
    assert URLS.error(SIGNED) == URLS.event("error", SIGNED)
    assert macros(URLS.impression(SIGNED)) == ["CACHEBUSTING", "TIMESTAMP"]
    assert macros(URLS.error(SIGNED)) == ["CACHEBUSTING", "TIMESTAMP", "ERRORCODE"]
    click = URLS.click(SIGNED)
    assert click == f"https://ads.example.com/c?tk={SIGNED}&cb=[CACHEBUSTING]"


def test_no_ad_error() -> None:
    url = URLS.no_ad_error("no_fill")
    assert url.startswith("https://ads.example.com/t/error?r=no_fill&")
    assert sorted(macros(url)) == ["CACHEBUSTING", "ERRORCODE", "TIMESTAMP"]
    assert "tk=" not in url
    weird = URLS.no_ad_error("no fill & <stuff>" + "x" * 100)
    assert query(weird)["r"][0] == ("no_fill____stuff_" + "x" * 100)[:64]
    assert query(URLS.no_ad_error(""))["r"] == ["unknown"]


def test_vmap_break_event() -> None:
    start = URLS.vmap_break_event("breakStart", "sess 1&x", "preroll.1")
    assert start.startswith("https://ads.example.com/t/breakStart?")
    assert query(start)["s"] == ["sess 1&x"] and query(start)["b"] == ["preroll.1"]
    assert sorted(macros(start)) == ["CACHEBUSTING", "TIMESTAMP"]
    err = URLS.vmap_break_event("error", "s", "b")
    assert sorted(macros(err)) == ["CACHEBUSTING", "ERRORCODE", "TIMESTAMP"]
    assert {"breakStart", "breakEnd", "error"} == VMAP_BREAK_EVENTS
    with pytest.raises(ValueError):
        URLS.vmap_break_event("start", "s", "b")


def test_public_url_validation() -> None:
    assert (
        TrackingUrls("http://localhost:8080")
        .impression("x")
        .startswith("http://localhost:8080/t/impression?")
    )
    assert (
        TrackingUrls("https://cdn.example.com/ads")
        .click("x")
        .startswith("https://cdn.example.com/ads/c?")
    )
    for bad in ("https://ads.example.com/", "ads.example.com", "ftp://x", "https://x?a=1", ""):
        with pytest.raises(ValueError):
            TrackingUrls(bad)


def test_token_is_quoted_if_odd() -> None:
    url = URLS.impression("a&b=c")
    assert query(url)["tk"] == ["a&b=c"]


# --------------------------------------------------------------------------------------------
# Macro expansion
# --------------------------------------------------------------------------------------------

TS_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}")


def test_expand_macros_defaults() -> None:
    url = expand_macros(URLS.event("start", SIGNED) + "&e=[ERRORCODE]&u=[UNKNOWNMACRO]")
    assert "[" not in url and "]" not in url
    q = dict(parse_qsl(urlsplit(url).query))
    assert re.fullmatch(r"\d{8}", q["cb"])
    assert TS_RE.fullmatch(q["ts"])
    assert q["ph"] == "00:00:05.000"
    assert q["e"] == "900"
    assert q["u"] == "-1"
    assert q["tk"] == SIGNED
    # Values are percent-encoded in the URL itself.
    assert "ts=" + q["ts"] not in url
    assert TS_RE.fullmatch(unquote(url.split("ts=")[1].split("&")[0]))
    assert set(DEFAULT_MACRO_VALUES) >= {"CACHEBUSTING", "TIMESTAMP", "ADPLAYHEAD", "ERRORCODE"}


def test_expand_macros_overrides_and_encoding() -> None:
    url = expand_macros(
        "https://x/p?a=[ERRORCODE]&b=[REASON]&c=[ADPLAYHEAD]",
        {"ERRORCODE": "402", "REASON": "a b&c=d/é"},
    )
    q = dict(parse_qsl(urlsplit(url).query))
    assert q == {"a": "402", "b": "a b&c=d/é", "c": "00:00:05.000"}
    assert expand_macros("https://x/no-macros") == "https://x/no-macros"
    assert expand_macros("https://x/[lower]") == "https://x/[lower]"


# --------------------------------------------------------------------------------------------
# Beacon query parsing
# --------------------------------------------------------------------------------------------


def test_parse_expanded_beacon() -> None:
    url = expand_macros(URLS.error(SIGNED))
    params = parse_beacon_query(dict(parse_qsl(urlsplit(url).query)))
    assert params.token == SIGNED
    assert params.cb == DEFAULT_MACRO_VALUES["CACHEBUSTING"]
    assert params.ts == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert params.error_code == 900
    assert params.playhead_ms is None


def test_parse_linear_beacon_playhead() -> None:
    url = expand_macros(URLS.event("midpoint", SIGNED), {"ADPLAYHEAD": "01:02:03.45"})
    params = parse_beacon_query(dict(parse_qsl(urlsplit(url).query)))
    assert params.playhead_ms == ((1 * 60 + 2) * 60 + 3) * 1000 + 450


def test_parse_unexpanded_macros_are_none() -> None:
    url = URLS.event("start", SIGNED) + "&ec=[ERRORCODE]"
    params = parse_beacon_query(dict(parse_qsl(urlsplit(url).query)))
    assert params == BeaconParams(token=SIGNED, cb=None, ts=None, playhead_ms=None, error_code=None)


def test_parse_no_ad_error_and_vmap() -> None:
    q = dict(parse_qsl(urlsplit(expand_macros(URLS.no_ad_error("no_fill"))).query))
    params = parse_beacon_query(q)
    assert params.token is None and params.reason == "no_fill" and params.error_code == 900
    q = dict(parse_qsl(urlsplit(URLS.vmap_break_event("breakEnd", "s-1", "mid 2")).query))
    params = parse_beacon_query(q)
    assert params.session == "s-1" and params.break_id == "mid 2"


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2024-05-01T12:00:00.000+00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00.000 02:00", datetime(2024, 5, 1, 10, tzinfo=UTC)),  # raw "+"
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("1714564800", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("1714564800000", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("[TIMESTAMP]", None),
        ("-1", None),
        ("yesterday", None),
        ("9" * 200, None),
        ("2024-13-01T00:00:00Z", None),
    ],
)
def test_parse_ts(ts: str, expected: datetime | None) -> None:
    assert parse_beacon_query({"ts": ts}).ts == expected


@pytest.mark.parametrize(
    ("ph", "expected"),
    [
        ("00:00:05.000", 5000),
        ("00:00:05", 5000),
        ("00:01:00.5", 60500),
        ("12.25", 12250),
        ("[ADPLAYHEAD]", None),
        ("-1", None),
        ("00:61:00.000", None),
        ("abc", None),
    ],
)
def test_parse_playhead(ph: str, expected: int | None) -> None:
    assert parse_beacon_query({"ph": ph}).playhead_ms == expected


@pytest.mark.parametrize(
    ("ec", "expected"),
    [("900", 900), ("402", 402), ("1009", 1009), ("[ERRORCODE]", None), ("-1", None),
     ("9x", None), ("", None), ("9" * 50, None), ("٣", None)],
)  # fmt: skip
def test_parse_error_code(ec: str, expected: int | None) -> None:
    assert parse_beacon_query({"ec": ec}).error_code == expected


def test_parse_garbage_cb_and_token() -> None:
    params = parse_beacon_query({"cb": "[CACHEBUSTING]", "tk": ""})
    assert params.cb is None and params.token is None
    assert parse_beacon_query({"cb": "x" * 65}).cb is None
    assert parse_beacon_query({"cb": "a b"}).cb is None
    assert parse_beacon_query({"tk": "A" * (MAX_TOKEN_LEN + 1)}).token is None
    assert parse_beacon_query({}) == BeaconParams(None, None, None, None, None)


@settings(max_examples=300)
@given(
    st.dictionaries(
        st.sampled_from(["tk", "cb", "ts", "ph", "ec", "r", "s", "b", "zz"]),
        st.one_of(st.text(), st.from_regex(r"\[[A-Z]+\]", fullmatch=True)),
    )
)
def test_fuzz_parse_beacon_query_never_raises(q: dict[str, str]) -> None:
    params = parse_beacon_query(q)
    assert isinstance(params, BeaconParams)
    if params.ts is not None:
        assert params.ts.tzinfo is not None


def test_beacon_round_trip_through_verify() -> None:
    """End to end: build URL, expand like a player, parse like the server, verify."""
    url = expand_macros(URLS.event("complete", sign(TOKEN, KEYRING, "complete")))
    params = parse_beacon_query(dict(parse_qsl(urlsplit(url).query)))
    assert params.token is not None
    assert verify(params.token, KEYRING, NOW + 60, MAX_AGE, "complete") == TOKEN
    assert params.ts is not None and params.ts - datetime(2024, 5, 1, 12, tzinfo=UTC) == (
        timedelta(0)
    )


def test_every_counted_event_has_its_own_scope() -> None:
    """A token for one counted event never counts as another; notUsed takes the
    impression's token (players derive its URL from the impression URL)."""
    from vastserver.delivery import COUNTED_EVENTS

    scopes = [tracking.scope_of(e) for e in COUNTED_EVENTS]
    assert len(set(scopes)) == len(scopes) and tracking.OTHER_SCOPE not in scopes
    assert set(scopes) <= {*tracking.BEACON_SCOPES, tracking.CLICK_SCOPE}
    assert tracking.scope_of("notUsed") == "impression"
    for event in tracking.EVENTS - set(COUNTED_EVENTS) - {"notUsed"}:
        assert tracking.scope_of(event) == tracking.OTHER_SCOPE, event


def test_a_verified_token_is_cached_for_its_scope_only() -> None:
    ring = Keyring.from_secrets([SECRET_A])
    good = sign(TOKEN, ring, "impression")
    assert verify(good, ring, NOW, MAX_AGE, "impression") == TOKEN
    assert verify(good, ring, NOW, MAX_AGE, "notUsed") == TOKEN
    for event in ("complete", "click", "mute", "start"):
        with pytest.raises(TokenError) as e:
            verify(good, ring, NOW, MAX_AGE, event)
        assert e.value.kind is TokenErrorKind.BAD_SIGNATURE
    assert ring._verified[good] == (TOKEN, "impression")


def test_dataclasses_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TOKEN.price_micros = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        URLS.public_url = "https://x"  # type: ignore[misc]


# --------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"tk": SIGNED},
        {"tk": SIGNED, "ec": "402", "ts": "2026-11-25T20:00:00Z", "ph": "00:00:05.000"},
        {"tk": "x" * (MAX_TOKEN_LEN + 1), "ec": "[ERRORCODE]"},
        {"tk": "[TOKEN]", "ec": "-1"},
        {"tk": "", "ec": "abc"},
        {"ec": "99999999999"},
        {"ec": "0402"},
        {"ec": "402 "},
    ],
)
def test_beacon_counting_params_agree_with_the_full_parse(query: dict[str, str]) -> None:
    full = parse_beacon_query(query)
    assert tracking.beacon_counting_params(query) == (full.token, full.error_code)


def test_verified_token_cache_holds_only_good_signatures_per_keyring() -> None:
    ring = Keyring.from_secrets([SECRET_A, SECRET_B])
    token = make_token(ad_serving_id=new_ad_serving_id(random.Random(99)))
    good = sign(token, ring, "impression")
    payload, kid, sig = good.split(".")
    forged = f"{payload}.{kid}.{'A' * len(sig)}"
    for _ in range(2):  # the second time from the cache: same verdicts
        assert verify(good, ring, NOW, MAX_AGE, "impression") == token
        with pytest.raises(TokenError) as e:
            verify(forged, ring, NOW, MAX_AGE, "impression")
        assert e.value.kind is TokenErrorKind.BAD_SIGNATURE
    assert good in ring._verified and forged not in ring._verified
    # time checks still apply to a cached token
    with pytest.raises(TokenError) as e:
        verify(good, ring, NOW + MAX_AGE + 1, MAX_AGE, "impression")
    assert e.value.kind is TokenErrorKind.EXPIRED
    with pytest.raises(TokenError) as e:
        verify(good, ring, NOW - MAX_CLOCK_SKEW_S - 1, MAX_AGE, "impression")
    assert e.value.kind is TokenErrorKind.FUTURE
    # a rotated keyring that dropped the key does not inherit what the old one verified
    rotated = Keyring.from_secrets([SECRET_B])
    with pytest.raises(TokenError):
        verify(
            sign(token, Keyring.from_secrets([SECRET_A]), "impression"),
            rotated,
            NOW,
            MAX_AGE,
            "impression",
        )

    class Sneaky(str):
        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return hash(good)

    with pytest.raises(TokenError):
        verify(Sneaky(forged), ring, NOW, MAX_AGE, "impression")


def test_verified_token_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "_VERIFIED_CACHE_SIZE", 5)
    ring = Keyring.from_secrets([SECRET_A])
    for n in range(12):
        verify(
            sign(make_token(pod_position=n + 1), ring, "impression"),
            ring,
            NOW,
            MAX_AGE,
            "impression",
        )
        assert len(ring._verified) <= 5


@settings(max_examples=300)
@given(_tokens(st.one_of(st.just(""), _text)), _text)
def test_sign_with_click_is_separate_signs(token: AdToken, click_url: str) -> None:
    """The shared-encoding result is exactly the beacon token signed for each beacon scope
    and the click token signed for the click scope."""
    got = tracking.sign_with_click(token, click_url, KEYRING)
    clicked = dataclasses.replace(token, click_url=click_url)
    beacons = tuple(sign(token, KEYRING, scope) for scope in tracking.BEACON_SCOPES)
    assert got == (beacons, sign(clicked, KEYRING, "click"))
    assert tracking.sign_scopes(token, KEYRING) == beacons
    assert verify(got[1], KEYRING, token.served_at, MAX_AGE, "click").click_url == click_url
