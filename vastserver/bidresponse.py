"""A decided pod as an OpenRTB 2.6 BidResponse, for ``POST /openrtb2/auction``.

The request is the one ``POST /openrtb2/pod`` takes (:mod:`vastserver.openrtb`), decided the
same way; only the answer differs: one ``seatbid`` (the seat ``VASTSERVER_OPENRTB_SEAT``
names: the exchange's id for us) holding one ``bid`` per ad of the pod, in pod order, each
carrying a VAST document of that ad alone in ``adm``.

Which imp each ad fills (``bid.impid``):

* an ad placed by a structured pod's slot rules (:class:`~vastserver.pipeline.decide.SlottedAd`)
  fills the imp of its rule, as the ``debug`` explanation names it;
* an ad of a hybrid pod (structured imps and dynamic ones, or several dynamic imps) fills
  the imp the decision split it into (:class:`~vastserver.pipeline.decide.ImpAd`,
  :mod:`vastserver.pipeline.imps`): the first ad played the imp of ``slotinpod`` 1, the
  last the imp of -1, the longest of the others the structured imps of any place, the rest
  the dynamic imps, within each one's ``maxseq`` and ``poddur`` (the decision leaves out
  the ads no split takes);
* otherwise (a structured pod whose slots share one rule) the first ad played fills the imp
  of ``slotinpod`` 1 and the last (of two or more) the imp of ``slotinpod`` -1, the others
  the other imps in play order, in request order. A dynamic pod's ads all fill its imp.

``bid.slotinpod`` is set in a structured pod alone (several imps, none dynamic), and only
as the imp the bid fills claims it: 1 on a bid for the imp of ``slotinpod`` 1 (the first
ad played), -1 for the imp of -1 (the last). A bid for an imp of any place (0) leaves it
out, even when an empty slot before it moved its ad up to play first or last: a bid
claiming a place its imp does not promise would contradict it (OpenRTB 2.6 reads
``bid.slotinpod`` as the only position the bid may take).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vastserver.catalog.model import Slot
from vastserver.openrtb import VAST_PROTOCOLS, OpenRtbPod
from vastserver.pipeline.decide import Decision, ImpAd, PlacedAd, SlottedAd
from vastserver.pipeline.pod import rounded_seconds

MTYPE_VIDEO = 2
"""``bid.mtype``: the markup is video (VAST)."""
CATTAX_IAB_1_0 = 1
"""``bid.cattax``: the catalog's categories are IAB Content Category Taxonomy 1.0."""
MIN_BID_CPM = 0.000_001
"""The least ``bid.price``: one micro (prices are given to the micro). The auction's
per-ad floor is never below it, so an ad billed 0 (a flat line item, a house ad of price
0) is dropped as ``below_floor`` before anything is reserved: an exchange drops a bid of
price 0 that carries no deal (Prebid Server does), and we hold no deals."""


def protocol(vast_version: str, *, wrapper: bool) -> int:
    """``bid.protocol``: the VAST version's code, the wrapper one for a third-party tag
    (one the imps list whenever they list any: the decision takes only the ads whose form
    they accept)."""
    inline, wrapped = VAST_PROTOCOLS[vast_version]
    return wrapped if wrapper else inline


def excluded(pod: OpenRtbPod, seat: str) -> str | None:
    """Why the BidRequest takes no bid of ours at all (``seat`` being ours), else None:
    ``bseat`` lists our seat, ``wseat`` does not, or an imp is ``pmp.private_auction`` = 1
    (deals only: we hold no deals, and the pod is answered whole, so one private imp makes
    the pod private). Decided before the pod, so nothing is reserved."""
    if seat in pod.blocked_seats:
        return f"bseat lists our seat {seat!r}"
    if pod.allowed_seats is not None and seat not in pod.allowed_seats:
        return f"wseat does not list our seat {seat!r}"
    if pod.private_imp is not None:
        return f"imp[{pod.private_imp}].pmp.private_auction is 1 (deals only), and we hold no deals"
    return None


def auction_floor_cpm(pod: OpenRtbPod) -> float:
    """The per-ad floor of ``POST /openrtb2/auction`` for every ad of the pod: the
    request's (``bidfloor``, :attr:`OpenRtbPod.pod_floors`), never below
    :data:`MIN_BID_CPM` (``/openrtb2/pod``, whose VAST carries no bid, keeps the
    request's, and serves ads billed 0)."""
    return max(pod.pod_floors[1] or 0.0, MIN_BID_CPM)


def is_structured(pod: OpenRtbPod) -> bool:
    """Several imps, each one slot (none dynamic)."""
    return len(pod.imp_ids) > 1 and all(m is None for m in pod.imp_maxseq)


def filled_imps(pod: OpenRtbPod, decision: Decision) -> list[str]:
    """The id of the imp each ad of ``decision`` fills, in pod order (see the module)."""
    ads = decision.ads
    n = len(ads)
    rules = decision.request.brk.slots
    imps = decision.request.brk.imps
    first = next((i for i, s in enumerate(pod.slots) if s is Slot.FIRST), None)
    last = next((i for i, s in enumerate(pod.slots) if s is Slot.LAST), None)
    others = [i for i in range(len(pod.imp_ids)) if i not in (first, last)]
    out: list[str] = []
    for k, ad in enumerate(ads):
        if isinstance(ad, ImpAd) and imps is not None:  # a hybrid pod, split by the decision
            out.append(imps[ad.imp].imp_id)
        elif isinstance(ad, SlottedAd) and rules is not None and rules[ad.slot_rule].imp_id:
            out.append(str(rules[ad.slot_rule].imp_id))  # (every rule of a BidRequest has one)
        elif k == 0 and first is not None:
            out.append(pod.imp_ids[first])
        elif k == n - 1 and n > 1 and last is not None:
            out.append(pod.imp_ids[last])
        elif others:
            out.append(pod.imp_ids[others.pop(0)])
        else:  # a pod of one ad whose only slot is the last; more ads than imps: the last
            out.append(pod.imp_ids[last if last is not None else -1])
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
    if cr.attributes:  # AdCOM creative attributes, declared and derived (ascending)
        bid["attr"] = list(cr.attributes)
    bid["protocol"] = protocol(vast_version, wrapper=cr.vast_tag_url is not None)
    bid["exp"] = exp_s
    bid["dur"] = rounded_seconds(cr.duration_ms)
    bid["mtype"] = MTYPE_VIDEO
    if slotinpod is not None:
        bid["slotinpod"] = slotinpod
    return bid


_SLOTINPOD: Mapping[Slot | None, int] = {Slot.FIRST: 1, Slot.LAST: -1}
"""``bid.slotinpod`` of a bid for an imp claiming that place (AdCOM "Slot Position in
Pod"); an imp of any place gives none."""


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
    structured = is_structured(pod)
    slot_of = dict(zip(pod.imp_ids, pod.slots, strict=False))
    version = decision.request.vast_version
    bids = []
    for ad, adm, impid in zip(decision.ads, adms, filled_imps(pod, decision), strict=True):
        slotinpod = None
        if structured:
            slotinpod = _SLOTINPOD.get(slot_of.get(impid))
        bids.append(_bid(ad, adm, impid, vast_version=version, slotinpod=slotinpod, exp_s=exp_s))
    out = no_bid(pod, bidid=bidid, currency=currency, debug=debug)
    if bids:
        out["seatbid"] = [{"seat": seat, "bid": bids}]
    return out


def no_bid(
    pod: OpenRtbPod, *, bidid: str, currency: str, debug: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A BidResponse without ``seatbid`` (OpenRTB's no-bid, in the form ``debug`` gets),
    carrying ``debug`` in ``ext.vastserver.debug`` when given."""
    out: dict[str, Any] = {"id": pod.request_id, "bidid": bidid, "cur": currency}
    if debug is not None:
        out["ext"] = {"vastserver": {"debug": debug}}
    return out
