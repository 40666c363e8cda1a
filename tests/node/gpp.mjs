// GPP strings made by the IAB reference library (@iabgpp/cmpapi), with what each section
// holds: for tests/test_consent.py, which reads them back with vastserver.consent.
// usage: node gpp.mjs COUNT SEED  ->  JSON [{gpp, ids, opted_out: {id: bool|null}, tc}]
import { GppModel } from "@iabgpp/cmpapi";

const count = Number(process.argv[2] || 200);
let state = Number(process.argv[3] || 1);
function random() {
  state = (state * 1103515245 + 12345) % 2147483648;
  return state / 2147483648;
}
const choose = (items) => items[Math.floor(random() * items.length)];

const US = {
  7: "usnat", 8: "usca", 9: "usva", 10: "usco", 11: "usut", 12: "usct", 13: "usfl",
  14: "usmt", 15: "usor", 16: "ustx", 17: "usde", 18: "usia", 19: "usne", 20: "usnh",
  21: "usnj", 22: "ustn", 23: "usmn", 24: "usmd", 25: "usin", 26: "usky", 27: "usri",
};
const OPT_OUTS = ["SaleOptOut", "SharingOptOut", "TargetedAdvertisingOptOut"];
const OTHERS = [
  "SaleOptOutNotice", "SharingOptOutNotice", "TargetedAdvertisingOptOutNotice",
  "SharingNotice", "ProcessingNotice", "SensitiveDataLimitUseNotice", "MspaCoveredTransaction",
];
const IDS = Object.keys(US).map(Number).concat([2, 6]);

function trySet(model, section, field, value) {
  try {
    model.setFieldValue(section, field, value);
    return true;
  } catch (e) {
    return false; // the section has no such field
  }
}

const out = [];
for (let i = 0; i < count; i++) {
  const model = new GppModel();
  const ids = [];
  const optedOut = {};
  const wanted = 1 + Math.floor(random() * 4);
  for (let j = 0; j < wanted; j++) {
    const id = choose(IDS);
    if (ids.includes(id)) continue;
    ids.push(id);
    if (id === 2) {
      model.setFieldValue("tcfeuv2", "CmpId", 10);
      model.setFieldValue(
        "tcfeuv2", "PurposeConsents", Array.from({ length: 24 }, () => random() < 0.5));
      optedOut[id] = null;
    } else if (id === 6) {
      const sale = choose(["Y", "N", "-"]);
      model.setFieldValue("uspv1", "Notice", choose(["Y", "N", "-"]));
      model.setFieldValue("uspv1", "OptOutSale", sale);
      model.setFieldValue("uspv1", "LspaCovered", choose(["Y", "N", "-"]));
      optedOut[id] = sale === "Y";
    } else {
      const name = US[id];
      let opted = false;
      for (const field of OPT_OUTS) {
        const v = Math.floor(random() * 3); // 0 n/a, 1 opted out, 2 did not
        if (trySet(model, name, field, v) && v === 1) opted = true;
      }
      for (const field of OTHERS) trySet(model, name, field, 1 + Math.floor(random() * 2));
      if (random() < 0.4) {
        const gpc = random() < 0.5;
        if (trySet(model, name, "GpcSegmentIncluded", true) && trySet(model, name, "Gpc", gpc)) {
          opted = opted || gpc;
        }
      }
      optedOut[id] = opted;
    }
  }
  out.push({
    gpp: model.encode(),
    ids,
    opted_out: optedOut,
    tc: ids.includes(2) ? model.encodeSection("tcfeuv2") : null,
  });
}
process.stdout.write(JSON.stringify(out));
