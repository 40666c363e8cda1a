"""The one place that emits XML: fully resolved view models printed by Jinja2 templates.

Python decides everything here (which elements a VAST version allows, every URL, every
formatted number); the templates in ``templates/`` only loop and print. The environment uses
autoescape and ``StrictUndefined`` and compiles every template at start-up.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import jinja2
from cachetools import LRUCache
from markupsafe import Markup, escape

from vastserver import __version__
from vastserver.catalog.model import Creative, Icon, UniversalAdId, is_https, is_vpaid
from vastserver.explain import decision_json
from vastserver.params import ParamError
from vastserver.pipeline.candidates import Candidate
from vastserver.pipeline.context import DEFAULT_VAST_VERSION
from vastserver.pipeline.decide import Decision, PlacedAd
from vastserver.pipeline.delivery import RESERVATION_S
from vastserver.pipeline.schedule import PlannedBreak, hms
from vastserver.tracking import (
    BEACON_SCOPES,
    LINEAR_EVENTS_BY_VERSION,
    PRIVACY_MACROS,
    AdToken,
    Keyring,
    MacroValues,
    TrackingUrls,
    fill_privacy,
    fill_server_macros,
    privacy_values,
    scope_of,
    server_macros,
    sign_scopes,
    sign_with_click,
)

EXPIRES_PLAY_MARGIN_S = 60
"""Pauses and buffering allowed for, beyond a pod's length, before its tokens expire."""

AD_SYSTEM = "vastserver"
CATEGORY_AUTHORITY = "https://iabtechlab.com"
UNIVERSAL_AD_ID_EXTENSION = "UniversalAdId"
MEZZANINE_EXTENSION = "Mezzanine"
ADVERTISER_AD_ID_EXTENSION = "AdvertiserAdId"
"""The ``Extension@type`` carrying a creative's advertiser-side ``ad_id``: VAST has no
element for it (``Creative@adId`` is the Ad-ID, our universal ad id)."""
DEBUG_EXTENSION = "vastserver-debug"
T = TypeVar("T")
FRAGMENT_CACHE_SIZE = 4096
"""Rendered ads kept (per candidate and VAST version): ~5-8 KB each."""
_DYNAMIC = (
    *(f"token:{scope}" for scope in BEACON_SCOPES),
    "click_token",
    "sequence",
    "ad_serving_id",
    "price",
    *(f"privacy:{name}" for name in PRIVACY_MACROS),
)
"""The values of an ad that depend on the request (see :class:`Renderer`): its token signed
for each beacon scope (in :data:`BEACON_SCOPES` order), then the click token and the rest,
then the values of the privacy macros in third parties' trackers and VAST tag URLs
(:data:`PRIVACY_MACROS`)."""
_N_SCOPES = len(BEACON_SCOPES)
_N_AD = len(_DYNAMIC) - len(PRIVACY_MACROS)
"""The values before the privacy macros'."""
_SCOPE_INDEX = {scope: n for n, scope in enumerate(BEACON_SCOPES)}
_Fragment = tuple[tuple[str, ...], tuple[int, ...]]
_Media = tuple[frozenset[str] | None, bool]
"""Which media an ad lists (:func:`media_of`): the rendition types (None: all of them,
:func:`listed_types`) and whether http media is left out (:func:`https_only`)."""
_FragmentKey = tuple[int, str, bool, _Media, int | None, MacroValues]
"""(candidate id, VAST version, priced, media, Expires seconds, filled macros)."""


def _cdata(url: str) -> Markup:
    """URLs go out in CDATA (they hold ``&`` and macros); ``]]>`` cannot occur in our URLs,
    but split it defensively so no input can end the section."""
    return Markup("<![CDATA[" + url.replace("]]>", "]]]]><![CDATA[>") + "]]>")


_URI_LIKE = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*:")
"""Text that starts like a URI scheme (``Acme: Spring Sale``, ``isci:ABC123``): linters and
players read such an element's text as a URI, which VAST wants in CDATA."""


def _text(value: str) -> str:
    """Catalog text for an element's content: in CDATA when it starts like a URI (a
    ``Markup``, printed as is), else plain (escaped by the template)."""
    return _cdata(value) if _URI_LIKE.match(value) else value


def duration(ms: int) -> str:
    return hms(ms / 1000)


@dataclass(frozen=True, slots=True)
class TrackingVM:
    event: str
    url: Markup
    offset: str | None = None


@dataclass(frozen=True, slots=True)
class MediaFileVM:
    id: str
    delivery: str
    type: str
    width: int
    height: int
    bitrate: int | None
    codec: str | None
    url: Markup
    api_framework: str | None = None
    """``VPAID`` on a VPAID creative's script (``application/javascript``): what tells a
    player to run the file rather than play it."""


@dataclass(frozen=True, slots=True)
class MezzanineVM:
    url: Markup
    delivery: str
    type: str
    width: int
    height: int
    codec: str | None
    file_size: int | None


@dataclass(frozen=True, slots=True)
class CaptionVM:
    url: Markup
    type: str
    language: str


@dataclass(frozen=True, slots=True)
class InteractiveFileVM:
    """An ``<InteractiveCreativeFile>`` (VAST 4.1+): a SIMID creative beside the media."""

    url: Markup
    type: str
    api_framework: str
    variable_duration: bool
    """Sent as ``variableDuration="true"`` only: false is the attribute's absence, and
    vastlint warns on ``variableDuration="false"`` (SIMID-1.0-simid-variable-duration-value)."""


@dataclass(frozen=True, slots=True)
class VerificationVM:
    vendor: str
    api_framework: str
    js_url: Markup
    parameters: Markup
    browser_optional: bool
    not_executed: tuple[Markup, ...]
    """``verificationNotExecuted`` tracking URLs."""


@dataclass(frozen=True, slots=True)
class FallbackImageVM:
    url: Markup
    width: int
    height: int
    alt_text: str | None


@dataclass(frozen=True, slots=True)
class IconVM:
    program: str
    width: int
    height: int
    x_position: str
    y_position: str
    duration: str | None
    offset: str | None
    creative_type: str
    image_url: Markup
    click_through: Markup | None
    fallback_images: tuple[FallbackImageVM, ...]
    """``IconClickFallbackImages``, where the version has them (:attr:`VersionVM.v42`)."""
    view_tracking: tuple[Markup, ...]
    click_tracking: tuple[Markup, ...]


@dataclass(frozen=True, slots=True)
class AdVM:
    id: str
    sequence: str
    ad_serving_id: str
    title: str
    advertiser: str
    categories: tuple[str, ...]
    price: str
    priced: bool
    """Whether the ad carries ``<Pricing>``: not when its impression costs nothing (a flat
    line item, a house ad at 0, a slot priced 0)."""
    currency: str
    impression_url: Markup
    error_url: Markup
    creative_id: str
    creative_ad_id: str
    """``Creative@adId`` (``AdID`` in 2.0/3.0): "Ad-ID for the creative (formerly ISCI)",
    the universal ad id."""
    advertiser_ad_id: str | None
    """The catalog's ``ad_id`` (the advertiser's own creative id), in an
    ``<Extension type="AdvertiserAdId">``."""
    universal_ad_id: str
    """For attributes (``idValue``); the element's text is :attr:`universal_ad_id_text`."""
    universal_ad_id_text: str
    universal_ad_id_registry: str
    more_universal_ad_ids: tuple[UniversalAdId, ...]
    """Other registries' ids, after the primary one: where the version has room for them
    (:attr:`VersionVM.v42`, and 2.0's extensions)."""
    duration: str
    skipoffset: str | None
    tracking: tuple[TrackingVM, ...]
    click_through: Markup | None
    media_files: tuple[MediaFileVM, ...]
    mezzanine: MezzanineVM | None
    verifications: tuple[VerificationVM, ...]
    icons: tuple[IconVM, ...]
    wrapper_url: Markup | None = None
    """A third-party tag's URL: the ad is a ``<Wrapper>`` (no media of its own)."""
    click_tracking: Markup | None = None
    """A wrapper's click beacon (``/t/click``): its click-through is the tag's."""
    captions: tuple[CaptionVM, ...] = ()
    interactive: tuple[InteractiveFileVM, ...] = ()
    """``InteractiveCreativeFile``s, after the media files: where the version has them
    (:attr:`VersionVM.interactive`)."""
    expires_s: int | None = None
    """``<Expires>`` (4.1+ inline): how many seconds the ad stays valid to play; None (no
    ``<Expires>``) in an inline VMAP's pods (:meth:`Renderer.vmap_inline`)."""
    extra_impressions: tuple[Markup, ...] = ()
    """The creative's third-party impression trackers (after ours)."""
    click_trackers: tuple[Markup, ...] = ()
    """The creative's third-party click trackers (``ClickTracking``)."""


@dataclass(frozen=True, slots=True)
class VersionVM:
    """What a VAST version allows, for the ad template."""

    version: str
    v4: bool
    """VAST 4.x: namespace, AdServingId, Category, UniversalAdId elements."""
    v41: bool
    """4.1+: Mezzanine attributes, ``adType``."""
    v42: bool
    """4.2+: several ``UniversalAdId`` (the 4.0 and 4.1 XSDs allow one),
    ``IconClickFallbackImages`` (not in the 4.1 XSD, though the 4.1 text has it), the
    ``interactiveStart`` tracking event (in the 4.2 XSD, not the 4.1 one)."""
    interactive: bool
    """``InteractiveCreativeFile`` (4.1+), where our SIMID files go. VAST 4.0 introduced
    the element but not its ``variableDuration`` (the 4.0 XSD has ``type`` and
    ``apiFramework`` only), which SIMID relies on: a player that cannot let the creative
    extend the ad must not play a variable-duration one. And 4.0 (2016) predates SIMID
    (2019; VAST 4.1 began VPAID's deprecation in favour of this element), so no 4.0 player
    runs one. 4.0 and earlier send the video alone, as players without SIMID play it."""
    v3: bool
    """3.0: Pricing/Advertiser elements."""
    sequenced: bool
    """``Ad@sequence`` exists from VAST 3.0 on; a 2.0 "pod" is a list of stand-alone ads."""
    ad_system_version: str
    max_icons: int | None
    """How many ``<Icon>``s a Linear may carry (None: any number). VAST 2.0 has no icons;
    the 4.0 and 4.1 XSDs allow one ``<Icon>`` in ``<Icons>``; 3.0 and 4.2+ any number."""
    ctv_extensions: bool
    """2.0: UniversalAdId and Mezzanine go out as IAB CTV-addendum ``InLine/Extensions``.
    Not in 3.0: the addendum puts them in ``CreativeExtensions`` there, which the 3.0 XSD
    rejects, and in ``InLine/Extensions`` vastlint warns (``VAST-2.0-ctv-extension-location``,
    ``-extension-misplaced-element``, ``-version-mismatch``); 3.0 keeps the ad id in
    ``Creative@AdID``. 4.x has the elements themselves."""

    @staticmethod
    def of(version: str) -> VersionVM:
        v4 = version.startswith("4")
        return VersionVM(
            version=version,
            v4=v4,
            v41=v4 and version != "4.0",
            v42=v4 and version not in ("4.0", "4.1"),
            interactive=v4 and version != "4.0",
            v3=version == "3.0",
            sequenced=version != "2.0",
            ad_system_version=__version__,
            max_icons=_MAX_ICONS.get(version),
            ctv_extensions=version == "2.0",
        )


_MAX_ICONS = {"2.0": 0, "4.0": 1, "4.1": 1}
ADCHOICES = "AdChoices"
"""The icon program kept first when a version allows fewer icons than a creative has."""


@dataclass(frozen=True, slots=True)
class VastVM:
    version: str
    v4: bool
    ads: tuple[Markup, ...]
    """Each ``<Ad>`` as rendered by the ad template, in pod order."""
    error_url: Markup | None
    debug_comment: Markup | None
    """The explanation of a no-fill: VAST has no extension point outside ``<Ad>``, so it
    travels as an XML comment (``--`` escaped inside JSON strings). A filled pod carries it
    in the first ad's ``<Extension>``."""


@dataclass(frozen=True, slots=True)
class VmapBreakVM:
    break_id: str
    time_offset: str
    ad_source_id: int
    tag_url: Markup | None
    template_type: str
    """The ad tag's ``templateType`` (:func:`vmap_template_type`)."""
    vast: Markup | None
    break_start: Markup
    break_end: Markup
    error: Markup


def _privacy(decision: Decision) -> tuple[str, ...]:
    """The values of the privacy macros for the decision's request."""
    p = decision.request.privacy
    return privacy_values(
        gdpr=p.gdpr,
        tc_string=p.tc_string,
        us_privacy=p.us_privacy,
        gpp=p.gpp,
        gpp_sid=p.gpp_sid,
    )


def _micros(ad: PlacedAd) -> int:
    """The billed CPM in micros: what the token carries and ``<Pricing>`` says."""
    return round(ad.price_cpm * 1_000_000)


def cpm_text(micros: int) -> str:
    """A CPM in micros (as the token carries it) for ``<Pricing>``: every decimal it has, at
    least two (``20.00``, ``33.333``, ``0.0004``); rounding to cents misstated such prices."""
    frac = f"{micros % 1_000_000:06d}".rstrip("0").ljust(2, "0")
    return f"{micros // 1_000_000}.{frac}"


class Renderer:
    """Renders decisions. An ad's ``<Ad>`` depends on the request only through the values
    in :data:`_DYNAMIC` (its token signed for each beacon scope, its click token, slot, ad
    serving id and price, and the privacy macros' values for the creative's trackers and
    tag URL); everything else comes from the catalog. So each (candidate, VAST
    version) is rendered by the ad template once, with placeholders for those values, and
    later ads are the cached text with the values put in (XML-escaped like the template
    would). A debug explanation is rendered in full."""

    def __init__(
        self,
        template_dir: Path,
        *,
        urls: TrackingUrls,
        keyring: Keyring,
        progress_offsets_s: Sequence[float] = (),
        fragment_cache_size: int = FRAGMENT_CACHE_SIZE,
        token_max_age_s: int = 24 * 3600,
    ) -> None:
        """``token_max_age_s``: how long a tracking token counts (``VASTSERVER_TOKEN_MAX_AGE``),
        one bound of ``<Expires>`` (:meth:`expires_for`)."""
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(template_dir)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        self.vast_template = self.env.get_template("vast.xml.j2")
        self.ad_template = self.env.get_template("vast_ad.xml.j2")
        self.vmap_template = self.env.get_template("vmap.xml.j2")
        self.urls = urls
        self.keyring = keyring
        self.progress_offsets_s = tuple(progress_offsets_s)
        self.token_max_age_s = token_max_age_s
        # Placeholders in the token alphabet (they pass URL quoting and escaping untouched),
        # random per process so no catalog text can contain one; all of one length, so none
        # is a prefix of another.
        stem = "Q" + secrets.token_hex(12)
        self._placeholders = tuple(f"{stem}{n:03d}" for n in range(len(_DYNAMIC)))
        self._split = re.compile("(" + "|".join(self._placeholders) + ")")
        self._slot_of = {ph: n for n, ph in enumerate(self._placeholders)}
        self._fragments: LRUCache[_FragmentKey, tuple[Candidate, _Fragment]] = LRUCache(
            maxsize=fragment_cache_size
        )
        self._versions = {v: VersionVM.of(v) for v in LINEAR_EVENTS_BY_VERSION}

    # ------------------------------------------------------------------ VAST

    def vast(
        self,
        decision: Decision,
        *,
        debug: Mapping[str, Any] | None = None,
        declaration: bool = True,
        expires: bool = True,
    ) -> str:
        """``expires``: whether 4.1+ ads carry ``<Expires>`` (:meth:`vast_vm`)."""
        return self.vast_template.render(
            vm=self.vast_vm(decision, debug=debug, expires=expires), declaration=declaration
        )

    def expires_for(self, decision: Decision) -> int:
        """The ``<Expires>`` of a pod's ads (and ``bid.exp``): how long a prefetching player or
        stitcher may hold them before it starts the pod. The end of their cap and budget
        reservation (an impression after it may overshoot them), and no later than leaves
        the whole pod, and a minute of pauses, to play before its tokens expire (their
        beacons no longer count: a click would find a 403); at least a second."""
        play_s = -(-decision.total_duration_ms // 1000) + EXPIRES_PLAY_MARGIN_S
        return max(1, min(RESERVATION_S, self.token_max_age_s - play_s))

    def vast_vm(
        self,
        decision: Decision,
        *,
        debug: Mapping[str, Any] | None = None,
        expires: bool = True,
    ) -> VastVM:
        """``expires``: whether 4.1+ ads carry ``<Expires>`` (:meth:`expires_for`); an inline
        VMAP's pods do not (:meth:`vmap_inline`)."""
        version = decision.request.vast_version
        expires_s = self.expires_for(decision) if expires else None
        ver = self._versions[version]
        debug_json = debug_comment = None
        if debug is not None:
            text = json.dumps(debug, separators=(",", ":"), sort_keys=True)
            if decision.ads:
                debug_json = _cdata(text)
            else:
                safe = text.replace("--", "-\\u002d")
                debug_comment = Markup(f"<!-- {DEBUG_EXTENSION} {safe} -->")
        if debug_json is None:
            ads = tuple(self._ad_fast(decision, ad, ver, expires_s) for ad in decision.ads)
        else:
            ads = tuple(
                self._ad_full(decision, ad, ver, debug_json if n == 0 else None, expires_s)
                for n, ad in enumerate(decision.ads)
            )
        error_url = None
        if not ads and ver.v4:
            # The 2.0 and 3.0 XSDs have no root <Error>; an empty <VAST/> is their no-fill.
            error_url = _cdata(self.urls.no_ad_error("no_fill"))
        return VastVM(
            version=version,
            v4=ver.v4,
            ads=ads,
            error_url=error_url,
            debug_comment=debug_comment,
        )

    def _filled(self, decision: Decision, cr: Creative) -> MacroValues:
        """The IAB macros of ``cr``'s third-party URLs that we fill in for this request,
        with their values (:func:`~vastserver.tracking.server_macros`): the device macros
        withheld when the viewer refused tracking (``lmt``, which the all-zero IFA and a
        GDPR refusal set) or the content is child-directed (``kids``, OpenRTB
        ``regs.coppa``), ``[GDPR]`` and ``[REGULATIONS]`` when the GDPR applies as resolved
        (by the viewer's country too); ``()`` when the creative has none of these macros
        (``server_macros``, known at load), so every other request shares the one
        fragment."""
        if not cr.server_macros:
            return ()
        req = decision.request
        return server_macros(
            refused=req.device.lmt,
            child_directed=req.content.kids,
            gdpr=req.privacy.gdpr is True,
        )

    def _dynamic(self, decision: Decision, ad: PlacedAd) -> tuple[str, ...]:
        """The request-dependent values of one ad, in :data:`_DYNAMIC` order."""
        req = decision.request
        c = ad.candidate
        cr = c.creative
        base = AdToken(
            ad_serving_id=ad.ad_serving_id,
            line_item_id=c.line_item.id,
            creative_id=cr.id,
            campaign_id=c.campaign.id,
            advertiser_id=c.advertiser.id,
            viewer_hash=decision.viewer_hash,
            price_micros=_micros(ad),
            served_at=int(decision.now.timestamp()),
            pod_position=ad.slot,
            session=req.session or "",
            click_url="",
            lmt=req.device.lmt,
            test=req.test,
        )
        # Beacons do not need the click-through; only the /c token carries it, which keeps
        # the ~16 tracking URLs of every ad short. A wrapper's click token (for its
        # /t/click beacon) has no click-through: the tag's ad brings its own.
        if _has_click_token(cr):
            tokens, click_token = sign_with_click(base, cr.click_through or "", self.keyring)
        else:
            tokens, click_token = sign_scopes(base, self.keyring), ""
        return (*tokens, click_token, str(ad.slot), ad.ad_serving_id, cpm_text(base.price_micros))

    def _ad_full(
        self,
        decision: Decision,
        ad: PlacedAd,
        ver: VersionVM,
        debug_json: Markup | None,
        expires_s: int | None = None,
    ) -> Markup:
        dyn = self._dynamic(decision, ad)
        vm = self._ad_vm(
            ad.candidate,
            ver,
            _micros(ad) > 0,
            media_of(ad.candidate.creative, decision),
            dyn[:_N_SCOPES],
            *dyn[_N_SCOPES:],
            privacy=_privacy(decision),
            expires_s=expires_s,
            filled=self._filled(decision, ad.candidate.creative),
        )
        return Markup(self.ad_template.render(ver=ver, ad=vm, debug_json=debug_json))

    def _ad_fast(
        self, decision: Decision, ad: PlacedAd, ver: VersionVM, expires_s: int | None = None
    ) -> Markup:
        cr = ad.candidate.creative
        media = media_of(cr, decision)
        filled = self._filled(decision, cr)
        statics, slots = self._fragment(
            ad.candidate, ver, _micros(ad) > 0, media, expires_s, filled
        )
        dyn = self._dynamic(decision, ad)
        # The tokens are base64url, dots and hex (nothing to escape); the rest is escaped
        # as the template would (a test holds this path equal to the template's). Only a
        # creative whose trackers or tag URL carry privacy macros has slots for their
        # values, which are percent-encoded (nothing to escape either).
        values = [*dyn[:_N_SCOPES], *map(escape, dyn[_N_SCOPES:])]
        if cr.privacy_macros:
            values += _privacy(decision)
        out = [statics[0]]
        for slot, text in zip(slots, statics[1:], strict=True):
            out.append(values[slot])
            out.append(text)
        return Markup("".join(out))

    def _fragment(
        self,
        c: Candidate,
        ver: VersionVM,
        priced: bool,
        media: _Media,
        expires_s: int | None = None,
        filled: MacroValues = (),
    ) -> _Fragment:
        """The ad template's text for ``c`` cut at the placeholders: the static pieces, and
        between each two the index of the :data:`_DYNAMIC` value that goes there. With and
        without ``<Pricing>`` (``priced``): one line item's impression may cost nothing in
        one slot and something in another. ``media`` (:func:`media_of`), part of the key:
        the rendition types listed, ``None`` (all of them) sharing the entry of every
        request that filters nothing out of this creative; and whether http media is left
        out, so that a fragment without it never answers a request that may have it, nor
        the other way round. With ``<Expires>`` of ``expires_s`` seconds, or without (None,
        :meth:`vast_vm`).
        With the IAB macros we fill in and their values (``filled``, :meth:`_filled`): a
        refused viewer's variant never answers a viewer who did not refuse, a viewer under
        the GDPR's never one who is not, nor the other way round."""
        key = (id(c), ver.version, priced, media, expires_s, filled)
        hit = self._fragments.get(key)
        if hit is not None and hit[0] is c:  # the entry holds ``c``: its id is not reused
            return hit[1]
        ph = self._placeholders
        vm = self._ad_vm(
            c,
            ver,
            priced,
            media,
            ph[:_N_SCOPES],
            ph[_N_SCOPES] if _has_click_token(c.creative) else "",
            *ph[_N_SCOPES + 1 : _N_AD],
            privacy=ph[_N_AD:],
            expires_s=expires_s,
            filled=filled,
        )
        pieces = self._split.split(self.ad_template.render(ver=ver, ad=vm, debug_json=None))
        frag = (tuple(pieces[0::2]), tuple(self._slot_of[p] for p in pieces[1::2]))
        self._fragments[key] = (c, frag)
        return frag

    def _ad_vm(
        self,
        c: Candidate,
        ver: VersionVM,
        priced: bool,
        media: _Media,
        tokens: Sequence[str],
        click_token: str,
        sequence: str,
        ad_serving_id: str,
        price: str,
        *,
        privacy: Sequence[str],
        expires_s: int | None = None,
        filled: MacroValues = (),
    ) -> AdVM:
        """``media``: the rendition types to list (None: all) and whether to leave out http
        renditions, mezzanine and caption files (:func:`media_of`); ``tokens``: the ad's token
        signed for each of :data:`BEACON_SCOPES`, in order;
        ``privacy``: the values of the privacy macros (:data:`PRIVACY_MACROS` order);
        ``expires_s``: the ad's ``<Expires>`` (4.1+), None for none; ``filled``: the IAB macros
        of the catalog's URLs (:func:`~vastserver.catalog.model.catalog_urls`) that we fill
        in, with their values (:meth:`_filled`; ``()``: none)."""

        def url(event: str) -> Markup:
            return _cdata(self.urls.event(event, tokens[_SCOPE_INDEX[scope_of(event)]]))

        cr = c.creative
        types, secure = media
        version = ver.version
        wrapper = cr.vast_tag_url is not None
        events = list(LINEAR_EVENTS_BY_VERSION[version])
        if cr.skip_offset_ms is not None and version != "2.0":
            events.append("skip")
        interactive = cr.interactive if ver.interactive else ()
        if interactive and ver.v42:  # the player's SIMID creative has started
            events.append("interactiveStart")

        def cat(u: str) -> Markup:  # a URL from the catalog, which a third party answers
            return _cdata(fill_server_macros(u, filled))

        def fill(u: str) -> str:  # a third party's URL, with its privacy macros filled in
            u = fill_server_macros(u, filled)
            return fill_privacy(u, privacy) if cr.privacy_macros else u

        extra = cr.trackers
        tag = cr.vast_tag_url
        if cr.privacy_macros or filled:
            extra = {e: tuple(map(fill, us)) for e, us in extra.items()}
            tag = None if tag is None else fill(tag)
        tracking = []
        for e in events:  # ours, then the third-party trackers of the same event
            tracking.append(TrackingVM(e, url(e)))
            tracking += [TrackingVM(e, _cdata(u)) for u in extra.get(e, ())]
        if version != "2.0":  # progress exists from VAST 3.0 on
            progress_url = url("progress")
            tracking += [
                TrackingVM("progress", progress_url, offset=duration(round(s * 1000)))
                for s in self.progress_offsets_s
                if s * 1000 < cr.duration_ms
            ]
        return AdVM(
            id=f"{c.line_item.id}-{cr.id}",
            sequence=sequence,
            ad_serving_id=ad_serving_id,
            title=_text(cr.title),
            advertiser=c.advertiser.domain,
            categories=c.categories,
            price=price,
            priced=priced,
            currency=c.line_item.currency,
            impression_url=url("impression"),
            error_url=url("error"),
            creative_id=cr.id,
            creative_ad_id=cr.universal_ad_id,
            advertiser_ad_id=None if cr.ad_id is None else _text(cr.ad_id),
            universal_ad_id=cr.universal_ad_id,
            universal_ad_id_text=_text(cr.universal_ad_id),
            universal_ad_id_registry=cr.universal_ad_id_registry,
            more_universal_ad_ids=tuple(
                UniversalAdId(u.registry, _text(u.value)) for u in cr.more_universal_ad_ids
            ),
            duration=duration(cr.duration_ms),
            skipoffset=None
            if cr.skip_offset_ms is None or version == "2.0"
            else duration(cr.skip_offset_ms),
            tracking=tuple(tracking),
            click_through=(
                _cdata(self.urls.click(click_token)) if click_token and not wrapper else None
            ),
            wrapper_url=_cdata(tag) if tag is not None else None,
            click_tracking=_cdata(self.urls.event("click", click_token)) if wrapper else None,
            expires_s=expires_s,
            captions=tuple(
                CaptionVM(cat(x.url), x.mime, x.language)
                for x in cr.captions
                if not secure or is_https(x.url)
            ),
            interactive=tuple(
                InteractiveFileVM(cat(f.url), f.type, f.api_framework, f.variable_duration)
                for f in interactive
            ),
            extra_impressions=tuple(_cdata(u) for u in extra.get("impression", ())),
            click_trackers=tuple(_cdata(u) for u in extra.get("click", ())),
            media_files=_media_files(cr, types, secure, cat, vpaid_scripts=not ver.v41),
            mezzanine=_mezzanine(cr, secure, cat),
            verifications=tuple(
                VerificationVM(
                    v.vendor,
                    v.api_framework,
                    cat(v.js_url),
                    _cdata(v.parameters),
                    v.browser_optional,
                    tuple(map(cat, v.not_executed_urls)),
                )
                for v in cr.verifications
            ),
            icons=tuple(
                IconVM(
                    program=i.program,
                    width=i.width,
                    height=i.height,
                    x_position=i.x_position,
                    y_position=i.y_position,
                    duration=None if i.duration_ms is None else duration(i.duration_ms),
                    offset=None if i.offset_ms is None else duration(i.offset_ms),
                    creative_type=i.creative_type,
                    image_url=cat(i.image_url),
                    click_through=None if i.click_through is None else cat(i.click_through),
                    fallback_images=tuple(
                        FallbackImageVM(
                            cat(f.image_url),
                            f.width,
                            f.height,
                            None if f.alt_text is None else _text(f.alt_text),
                        )
                        for f in i.click_fallback_images
                    )
                    if ver.v42
                    else (),
                    view_tracking=tuple(_cdata(fill(u)) for u in i.view_tracking_urls),
                    click_tracking=tuple(_cdata(fill(u)) for u in i.click_tracking_urls),
                )
                for i in icons_for(cr.icons, ver.max_icons)
            ),
        )

    def empty_vast(self, reason: str, version: str = DEFAULT_VAST_VERSION) -> str:
        """A valid no-fill VAST of ``version`` without a decision (load shedding, internal
        errors); like a decided no-fill, its root ``<Error>`` (carrying ``reason``) is 4.x
        only: the 2.0 and 3.0 XSDs have none."""
        ver = self._versions[version]
        vm = VastVM(
            version=version,
            v4=ver.v4,
            ads=(),
            error_url=_cdata(self.urls.no_ad_error(reason)) if ver.v4 else None,
            debug_comment=None,
        )
        return self.vast_template.render(vm=vm, declaration=True)

    def empty_vmap(self) -> str:
        return self.vmap_template.render(breaks=[])

    # ------------------------------------------------------------------ VMAP

    def tag_queries(
        self,
        breaks: Sequence[PlannedBreak],
        query: Mapping[str, str],
        *,
        session: str,
        max_query: int | None = None,
        check: Callable[[Mapping[str, str]], T] | None = None,
    ) -> tuple[list[str], T | None]:
        """Each break's ``/vast`` query string: the request's parameters (but the VMAP's own,
        ``debug`` and the break's) with the break's filled in; and what ``check`` makes of the first
        break's parameters (the others differ only in the break parameters made here), so
        that what ``/vast`` would refuse is refused now (its ``ParamError`` propagates). The
        break parameters stay within what ``/vast`` reads: the catalog's ad rules and the
        VMAP's break durations are held to the same bounds.

        ``ParamError`` (field ``query``) when a query string would be longer than
        ``max_query``: ``/vast`` would refuse it, and the break would go unfilled."""
        carried = {
            k: v
            for k, v in query.items()
            if k not in _VMAP_ONLY and k not in _BREAK_PARAMS and k not in _NOT_CARRIED
        }
        # ``debug`` asks for the VMAP's own explanation (an inline VMAP's): it is checked
        # with the break's parameters, but a tag carrying it would make the player (which
        # sends no bearer token) fetch a 401 for every break.
        kept = {k: v for k, v in query.items() if k in _NOT_CARRIED}
        out: list[str] = []
        checked: T | None = None
        for n, b in enumerate(breaks):
            params = {
                **carried,
                "break": b.position.value,
                "avail": str(b.avail),
                "session": session,
                "pod_duration": _num(b.duration_s),
                "max_ads": str(b.max_ads),
            }
            if n == 0 and check is not None:
                checked = check({**params, **kept})
            tag_query = urlencode(params)
            if max_query is not None and len(tag_query) > max_query:
                raise ParamError(
                    "query",
                    f"too long to carry into the breaks' ad tags: {len(tag_query)} characters"
                    f" once encoded, /vast reads at most {max_query}",
                )
            out.append(tag_query)
        if not breaks and check is not None:  # nothing to serve; the same answer to bad input
            check({**carried, **kept, "session": session})
        return out, checked

    def vmap_tags(
        self,
        breaks: Sequence[PlannedBreak],
        tag_queries: Sequence[str],
        *,
        session: str,
        vast_version: str = DEFAULT_VAST_VERSION,
    ) -> str:
        """Each break points back at ``/vast`` with its query (:meth:`tag_queries`), which
        answers VAST ``vast_version``."""
        return self.vmap_inline(
            breaks, [None] * len(breaks), tag_queries, session=session, vast_version=vast_version
        )

    def vmap_inline(
        self,
        breaks: Sequence[PlannedBreak],
        decisions: Sequence[Decision | None],
        tag_queries: Sequence[str],
        *,
        session: str,
        debug: bool = False,
        vast_version: str = DEFAULT_VAST_VERSION,
    ) -> str:
        """Each decided break's pod inline; a break without a decision (None) as an ad tag
        with its query (:meth:`tag_queries`), which answers VAST ``vast_version``.

        Inline pods carry no ``<Expires>``: a break plays at its offset into the content
        (hours after the VMAP is served, more when the viewer pauses), long after the
        :attr:`expires_s` a ``/vast`` answer carries, so a player honouring it would drop
        every inline mid-roll. Their tokens count for ``VASTSERVER_TOKEN_MAX_AGE`` and only
        breaks due within a quarter of it go inline (``INLINE_HORIZON_DIVISOR``)."""
        template_type = vmap_template_type(vast_version)
        out: list[VmapBreakVM] = []
        rows = zip(breaks, decisions, tag_queries, strict=True)
        for n, (b, d, tag_query) in enumerate(rows, start=1):
            if d is not None:
                explain = decision_json(d) if debug else None
                doc = Markup(self.vast(d, debug=explain, declaration=False, expires=False))
                out.append(self._break_vm(b, n, session, template_type, tag_url=None, vast=doc))
            else:
                url = _cdata(f"{self.urls.public_url}/vast?{tag_query}")
                out.append(self._break_vm(b, n, session, template_type, tag_url=url, vast=None))
        return self.vmap_template.render(breaks=out)

    def _break_vm(
        self,
        b: PlannedBreak,
        n: int,
        session: str,
        template_type: str,
        *,
        tag_url: Markup | None,
        vast: Markup | None,
    ) -> VmapBreakVM:
        u = self.urls
        return VmapBreakVM(
            break_id=b.break_id,
            time_offset=b.time_offset,
            ad_source_id=n,
            tag_url=tag_url,
            template_type=template_type,
            vast=vast,
            break_start=_cdata(u.vmap_break_event("breakStart", session, b.break_id)),
            break_end=_cdata(u.vmap_break_event("breakEnd", session, b.break_id)),
            error=_cdata(u.vmap_break_event("error", session, b.break_id)),
        )


_VMAP_ONLY = frozenset(
    {
        "content_duration",
        "cue_points",
        "midroll_interval",
        "preroll",
        "midroll",
        "postroll",
        "preroll_duration",
        "midroll_duration",
        "postroll_duration",
        "inline",
    }
)
_BREAK_PARAMS = frozenset(
    {"break", "avail", "session", "pod_duration", "poddur", "max_ads", "maxseq"}
)
# Checked as /vast checks them but not put into the tags (see ``tag_queries``).
_NOT_CARRIED = frozenset({"debug"})


def vmap_template_type(vast_version: str) -> str:
    """``AdTagURI@templateType`` for an ad tag answering VAST ``vast_version``. VMAP 1.0
    (2012) predates VAST 4: its XSD enumerates ``vast1``, ``vast2``, ``vast3`` and
    ``proprietary`` only, so ``vast4`` would be invalid and ``proprietary`` would say the
    answer is not VAST. Common practice (e.g. Google Ad Manager's VMAP) is ``vast3`` for
    VAST 3 and later, so 3.0 and 4.x are ``vast3``, 2.0 ``vast2``."""
    return "vast2" if vast_version == "2.0" else "vast3"


def icons_for(icons: Sequence[Icon], limit: int | None) -> tuple[Icon, ...]:
    """The icons a version with room for ``limit`` of them (None: any number) carries: all
    when they fit, else the AdChoices icon (the one with a regulatory purpose) before the
    others, in catalog order."""
    if limit is None or len(icons) <= limit:
        return tuple(icons)
    first = [i for i in icons if i.program.casefold() == ADCHOICES.casefold()]
    rest = [i for i in icons if i.program.casefold() != ADCHOICES.casefold()]
    return tuple([*first, *rest][:limit])


def _has_click_token(cr: Creative) -> bool:
    """An ad has a click token when it has a click-through (``/c``) or is a wrapper (its
    ``/t/click`` beacon); the fast path and the full render must agree on it."""
    return bool(cr.click_through) or cr.vast_tag_url is not None


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else f"{v:.3f}"


def listed_types(cr: Creative, mimes: frozenset[str] | None) -> frozenset[str] | None:
    """The rendition types of ``cr`` its ``<MediaFiles>`` list for a request accepting
    ``mimes`` (OpenRTB ``video.mimes``): ``None`` when that is all of them (no ``mimes``,
    or every type of the creative listed), so such requests share one cached fragment."""
    if mimes is None:
        return None
    types = frozenset(r.mime.lower() for r in cr.renditions)
    kept = types & mimes
    return None if kept == types else kept


def media_of(cr: Creative, decision: Decision) -> _Media:
    """Which of ``cr``'s media its ad lists for ``decision``'s request."""
    req = decision.request
    return listed_types(cr, req.mimes), https_only(cr, req.require_https)


def https_only(cr: Creative, require_https: bool) -> bool:
    """Whether ``cr``'s ad leaves out its http media files, mezzanine and caption files: when
    the request requires https media (``VASTSERVER_REQUIRE_HTTPS_MEDIA``, OpenRTB
    ``imp.secure``) and the creative has any. False for a creative whose every such URL is
    https, so that its requests share one cached fragment whatever they require
    (:attr:`Creative.http_media`, known from the creative's creation on)."""
    return require_https and cr.http_media


VPAID_SCRIPT_MIMES = frozenset({"application/javascript", "text/javascript"})
"""A VPAID unit's file types (Flash is long gone)."""


def _media_files(
    cr: Creative,
    media: frozenset[str] | None,
    secure: bool = False,
    cat: Callable[[str], Markup] = _cdata,
    vpaid_scripts: bool = True,
) -> tuple[MediaFileVM, ...]:
    """The renditions (of the ``media`` types, when given; https ones only when ``secure``),
    numbered as in the catalog; a VPAID creative's scripts marked ``apiFramework``, or left
    out without ``vpaid_scripts`` (VAST 4.1 deprecated VPAID: its video plays)."""
    vpaid = cr.api_framework if is_vpaid(cr.api_framework) else None
    return tuple(
        MediaFileVM(
            id=f"{cr.id}-{n}",
            delivery=r.delivery,
            type=r.mime,
            width=r.width,
            height=r.height,
            bitrate=r.bitrate_kbps,
            codec=r.codec,
            url=cat(r.url),
            api_framework=vpaid if r.mime.lower() in VPAID_SCRIPT_MIMES else None,
        )
        for n, r in enumerate(cr.renditions, start=1)
        if (media is None or r.mime.lower() in media)
        and (not secure or is_https(r.url))
        and (vpaid_scripts or vpaid is None or r.mime.lower() not in VPAID_SCRIPT_MIMES)
    )


def _mezzanine(
    cr: Creative, secure: bool = False, cat: Callable[[str], Markup] = _cdata
) -> MezzanineVM | None:
    """The creative's mezzanine; none when it is http and ``secure`` asks for https.
    ``cat``: how a catalog URL goes out (``_media_files`` too)."""
    m = cr.mezzanine
    if m is None or (secure and not is_https(m.url)):
        return None
    return MezzanineVM(
        url=cat(m.url),
        delivery="progressive",
        type=m.mime,
        width=m.width,
        height=m.height,
        codec=m.codec,
        file_size=m.file_size,
    )
