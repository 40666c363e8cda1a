"""A decided pod as an OpenRTB 2.6 BidResponse, for ``POST /openrtb2/auction``.

The request is the one ``POST /openrtb2/pod`` takes (:mod:`vastserver.openrtb`), decided the
same way; only the answer differs: one ``seatbid`` (the seat ``VASTSERVER_OPENRTB_SEAT``
names: the exchange's id for us) holding one ``bid`` per ad of the pod, in pod order, each
carrying a VAST document of that ad alone in ``adm``.

Which imp each ad fills (``bid.impid``):

* an ad placed by a structured pod's slot rules (:class:`~vastserver.pipeline.decide.SlottedAd`)
  fills the imp of its rule, as the ``debug`` explanation names it;
* otherwise the ads take the imps in play order: the first ad the imp of ``slotinpod`` 1,
  the last ad (of two or more) the imp of ``slotinpod`` -1, the others the other structured
  imps in request order, then the dynamic imps (each up to its ``maxseq``; the last takes
  any rest). A dynamic pod's ads all fill its imp.

``bid.slotinpod`` is set in a structured pod alone (several imps, none dynamic): 1 for the
first ad played and -1 for the last, since first- and last-slot prices and restrictions
follow the ad's place among those played; the others are left out (0, any).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vastserver.catalog.model import Slot
from vastserver.openrtb import OpenRtbPod
from vastserver.pipeline.decide import Decision, PlacedAd, SlottedAd
from vastserver.pipeline.pod import rounded_seconds

MTYPE_VIDEO = 2
"""``bid.mtype``: the markup is video (VAST)."""
CATTAX_IAB_1_0 = 1
"""``bid.cattax``: the catalog's categories are IAB Content Category Taxonomy 1.0."""

_PROTOCOLS: Mapping[str, tuple[int, int]] = {
    "2.0": (2, 5),
    "3.0": (3, 6),
    "4.0": (7, 8),
    "4.1": (11, 12),
    "4.2": (13, 14),
    "4.3": (15, 16),
}
"""AdCOM List: Creative Subtypes - Audio/Video: (inline, wrapper) code of each VAST version."""


def protocol(vast_version: str, *, wrapper: bool) -> int:
    """``bid.protocol``: the VAST version's code, the wrapper one for a third-party tag."""
    inline, wrapped = _PROTOCOLS[vast_version]
    return wrapped if wrapper else inline


def is_structured(pod: OpenRtbPod) -> bool:
    """Several imps, each one slot (none dynamic)."""
    return len(pod.imp_ids) > 1 and all(m is None for m in pod.imp_maxseq)


def filled_imps(pod: OpenRtbPod, decision: Decision) -> list[str]:
    """The id of the imp each ad of ``decision`` fills, in pod order (see the module)."""
    n = len(decision.ads)
    rules = decision.request.brk.slots
    structured = [i for i, m in enumerate(pod.imp_maxseq) if m is None]
    first = next((i for i in structured if pod.slots[i] is Slot.FIRST), None)
    last = next((i for i in structured if pod.slots[i] is Slot.LAST), None)
    others = [i for i in structured if i not in (first, last)]
    dynamic = [i for i, m in enumerate(pod.imp_maxseq) if m is not None for _ in range(m)]
    spare = [*others, *dynamic]
    out: list[str] = []
    for k, ad in enumerate(decision.ads, start=1):
        if isinstance(ad, SlottedAd) and rules is not None:
            imp_id = rules[ad.slot_rule].imp_id
            if imp_id is not None:  # (every rule of a BidRequest's pod names its imp)
                out.append(imp_id)
                continue
        if k == 1 and first is not None:
            taken, first = first, None
        elif k == n and n > 1 and last is not None:
            taken, last = last, None
        elif spare:
            taken = spare.pop(0)
        elif last is not None:  # a pod of one ad whose only slot claims the last
            taken, last = last, None
        else:  # more ads than the dynamic imps' maxseq (the ad rules' cap): the last one
            taken = (dynamic or structured or [0])[-1]
        out.append(pod.imp_ids[taken])
    return out


def _price(ad: PlacedAd) -> float:
    """The CPM ``<Pricing>`` and the ad's tokens carry (to the micro)."""
    return round(ad.price_cpm * 1_000_000) / 1_000_000


def _bid(
    ad: PlacedAd,
    adm: str,
    impid: str,
    *,
    vast_version: str,
    slotinpod: int | None,
    exp_s: int,
) -> dict[str, Any]:
    c = ad.candidate
    cr = c.creative
    bid: dict[str, Any] = {
        "id": ad.ad_serving_id,
        "impid": impid,
        "price": _price(ad),
        "adm": adm,
    }
    if cr.ad_id:
        bid["adid"] = cr.ad_id
    if c.advertiser.domain:
        bid["adomain"] = [c.advertiser.domain]
    bid["cid"] = c.campaign.id
    bid["crid"] = cr.id
    if c.categories:
        bid["cattax"] = CATTAX_IAB_1_0
        bid["cat"] = list(c.categories)
    bid["protocol"] = protocol(vast_version, wrapper=cr.vast_tag_url is not None)
    bid["exp"] = exp_s
    bid["dur"] = rounded_seconds(cr.duration_ms)
    bid["mtype"] = MTYPE_VIDEO
    if slotinpod is not None:
        bid["slotinpod"] = slotinpod
    return bid


def bid_response(
    pod: OpenRtbPod,
    decision: Decision,
    adms: Sequence[str],
    *,
    bidid: str,
    seat: str,
    currency: str,
    exp_s: int,
    debug: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The BidResponse of a decided pod: ``adms`` holds each ad's VAST document (pod order),
    ``seat`` the ``seatbid.seat`` every bid is made for,
    ``exp_s`` how long the ads may wait to play (``bid.exp``: the VAST's ``<Expires>``),
    ``debug`` the decision's explanation (in ``ext.vastserver.debug``). A pod without ads
    gives a BidResponse without ``seatbid`` (a no-bid: sent only with ``debug``, else the
    answer is a 204)."""
    n = len(decision.ads)
    structured = is_structured(pod)
    version = decision.request.vast_version
    bids = []
    for k, (ad, adm, impid) in enumerate(
        zip(decision.ads, adms, filled_imps(pod, decision), strict=True), start=1
    ):
        slotinpod = None
        if structured and k == 1:
            slotinpod = 1
        elif structured and k == n and n > 1:
            slotinpod = -1
        bids.append(_bid(ad, adm, impid, vast_version=version, slotinpod=slotinpod, exp_s=exp_s))
    out: dict[str, Any] = {"id": pod.request_id, "bidid": bidid, "cur": currency}
    if bids:
        out["seatbid"] = [{"seat": seat, "bid": bids}]
    if debug is not None:
        out["ext"] = {"vastserver": {"debug": debug}}
    return out
