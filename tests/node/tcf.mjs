// TC strings written by the IAB reference library (@iabtechlabtcf/core), with what each holds:
// for tests/test_consent.py, which reads them back with vastserver.consent.
// usage: node tcf.mjs COUNT SEED  ->  JSON [{tc, purposes, li, vendors, li_vendors,
//                                          restrictions: [[purpose, type, [vendor ids]]]}]
import { PurposeRestriction, Segment, SegmentEncoder, TCModel } from "@iabtechlabtcf/core";

const count = Number(process.argv[2] || 100);
let state = Number(process.argv[3] || 1);
function random() {
  state = (state * 1103515245 + 12345) % 2147483648;
  return state / 2147483648;
}
const pick = (n) => Math.floor(random() * n);
const VENDORS = [5, 76, 77, 78, 300, 755];
const ALL_IDS = new Set(Array.from({ length: 2000 }, (_, v) => v + 1));

const out = [];
for (let i = 0; i < count; i++) {
  const model = new TCModel();
  model.cmpId = 10;
  model.cmpVersion = 1;
  model.vendorListVersion = 100;
  model.tcfPolicyVersion = 4;
  const purposes = [1, 2, 3, 4, 7].filter(() => random() < 0.75);
  const li = [2, 7].filter(() => random() < 0.5);
  const vendors = VENDORS.filter(() => random() < 0.7);
  const liVendors = VENDORS.filter(() => random() < 0.3);
  purposes.forEach((p) => model.purposeConsents.set(p));
  li.forEach((p) => model.purposeLegitimateInterests.set(p));
  vendors.forEach((v) => model.vendorConsents.set(v));
  liVendors.forEach((v) => model.vendorLegitimateInterests.set(v));
  if (random() < 0.3) {
    // a long run of vendors: the library writes it as a range
    for (let v = 1000; v < 1200; v++) model.vendorConsents.set(v);
  }
  const wanted = pick(4);
  for (let k = 0; k < wanted; k++) {
    const restriction = new PurposeRestriction([1, 2, 4, 7][pick(4)], pick(3));
    const first = VENDORS[pick(VENDORS.length)];
    const run = random() < 0.5 ? 1 : 3;
    for (const v of VENDORS.filter((v) => v >= first).slice(0, run)) {
      model.publisherRestrictions.add(v, restriction);
    }
  }
  // The restriction encoder reads the vendor list's ids to write runs of listed vendors
  // as ranges; with every id listed, a range is a run of consecutive ids.
  model.publisherRestrictions.gvl_ = { vendorIds: ALL_IDS };
  const restrictions = model.publisherRestrictions.getRestrictions().map((r) => [
    r.purposeId,
    r.restrictionType,
    model.publisherRestrictions.getVendors(r),
  ]);
  out.push({
    // the core segment as the library writes it; TCString.encode would first apply a
    // vendor list's declarations (which purposes each vendor may claim), and we have none
    tc: SegmentEncoder.encode(model, Segment.CORE),
    purposes,
    li,
    vendors: Array.from({ length: 1300 }, (_, v) => v).filter((v) => model.vendorConsents.has(v)),
    li_vendors: liVendors,
    restrictions,
  });
}
process.stdout.write(JSON.stringify(out));
