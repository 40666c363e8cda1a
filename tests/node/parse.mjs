// Parse VAST / VMAP documents the way a real player does and print JSON.
//
// Used by tests/support/conformance.py (node_parse_vast / node_parse_vmap /
// node_parse_many). Libraries: @dailymotion/vast-client (VASTParser),
// @dailymotion/vmap (VMAP class taking an XML Document), @xmldom/xmldom.
//
// Usage:
//   node parse.mjs vast  < doc.xml   -> one JSON object
//   node parse.mjs vmap  < doc.xml   -> one JSON object
//   node parse.mjs batch < docs.json -> JSON array; input is
//                                       [{"kind": "vast"|"vmap", "xml": "..."}, ...]
//
// No network access: wrappers are never followed (VASTParser.parseVAST only
// parses the given document; wrapper ads are returned as parsed).
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';

const require = createRequire(import.meta.url);
const { DOMParser, XMLSerializer } = require('@xmldom/xmldom');
const { VASTParser } = require('@dailymotion/vast-client');
const vmapModule = require('@dailymotion/vmap');
const VMAP = vmapModule.default || vmapModule;

/**
 * Parse XML with xmldom. Warnings are collected; an 'error' (e.g. a
 * well-formedness or namespace problem xmldom recovers from) makes the
 * document fail like in a strict player; a 'fatalError' makes xmldom throw.
 */
function parseXml(xml) {
  const xmlWarnings = [];
  const xmlErrors = [];
  const onError = (level, message) => {
    const text = String(message).trim();
    if (level === 'warning') xmlWarnings.push(text);
    else xmlErrors.push(`${level}: ${text}`);
  };
  const doc = new DOMParser({ onError }).parseFromString(xml, 'text/xml');
  if (xmlErrors.length) {
    const err = new Error(xmlErrors.join('; '));
    err.name = 'XMLError';
    throw err;
  }
  return { doc, xmlWarnings };
}

function errorInfo(e) {
  if (!e) return null;
  return { name: e.name || 'Error', message: String(e.message || e) };
}

function urlList(templates) {
  return (templates || []).map((t) => (t && typeof t === 'object' ? t.url : t));
}

function summariseCreative(c) {
  const out = {
    id: c.id,
    adId: c.adId,
    sequence: c.sequence,
    type: c.type,
    universalAdIds: (c.universalAdIds || []).map((u) => ({
      idRegistry: u.idRegistry,
      value: u.value,
    })),
    creativeExtensions: (c.creativeExtensions || []).map((x) => ({
      type: (x.attributes && x.attributes.type) || null,
      children: (x.children || []).map((ch) => ch.name),
    })),
  };
  if (c.type === 'linear') {
    Object.assign(out, {
      duration: c.duration,
      skipDelay: c.skipDelay,
      mediaFiles: c.mediaFiles.length,
      mediaFileDetails: c.mediaFiles.map((m) => ({
        id: m.id,
        fileURL: m.fileURL,
        delivery: m.deliveryType,
        mimeType: m.mimeType,
        width: m.width,
        height: m.height,
        bitrate: m.bitrate,
        codec: m.codec,
      })),
      mezzanine: c.mezzanine
        ? {
            fileURL: c.mezzanine.fileURL,
            delivery: c.mezzanine.delivery,
            type: c.mezzanine.type,
            width: c.mezzanine.width,
            height: c.mezzanine.height,
          }
        : null,
      // vast-client keeps the first <InteractiveCreativeFile> of <MediaFiles> only
      interactiveCreativeFile: c.interactiveCreativeFile
        ? {
            fileURL: c.interactiveCreativeFile.fileURL,
            type: c.interactiveCreativeFile.type,
            apiFramework: c.interactiveCreativeFile.apiFramework,
            variableDuration: c.interactiveCreativeFile.variableDuration,
          }
        : null,
      trackingEvents: Object.keys(c.trackingEvents || {}).sort(),
      clickThrough: c.videoClickThroughURLTemplate
        ? c.videoClickThroughURLTemplate.url || null
        : null,
      clickTracking: urlList(c.videoClickTrackingURLTemplates),
      icons: (c.icons || []).length,
    });
  } else if (c.type === 'nonlinear') {
    out.variations = (c.variations || []).length;
    out.trackingEvents = Object.keys(c.trackingEvents || {}).sort();
  } else if (c.type === 'companion') {
    out.variations = (c.variations || []).length;
  }
  return out;
}

function summariseAd(ad) {
  return {
    id: ad.id,
    sequence: ad.sequence,
    adType: ad.adType,
    // Without a fetcher VASTParser does not follow wrappers; it stores the
    // wrapper's <VASTAdTagURI> in ad.VASTAdTagURI instead.
    isWrapper: Boolean(ad.VASTAdTagURI),
    vastAdTagURI: ad.VASTAdTagURI || null,
    adServingId: ad.adServingId,
    system: ad.system ? { value: ad.system.value, version: ad.system.version } : null,
    title: ad.title,
    description: ad.description,
    advertiser: ad.advertiser ? { id: ad.advertiser.id, value: ad.advertiser.value } : null,
    pricing: ad.pricing
      ? { value: ad.pricing.value, model: ad.pricing.model, currency: ad.pricing.currency }
      : null,
    categories: (ad.categories || []).map((cat) => ({
      authority: cat.authority,
      value: cat.value,
    })),
    expires: ad.expires,
    errorURLTemplates: urlList(ad.errorURLTemplates),
    impressionURLTemplates: urlList(ad.impressionURLTemplates),
    extensions: (ad.extensions || []).map((x) => ({
      type: (x.attributes && x.attributes.type) || null,
      children: (x.children || []).map((ch) => ch.name),
    })),
    adVerifications: (ad.adVerifications || []).length,
    creatives: (ad.creatives || []).map(summariseCreative),
  };
}

/** Parse one VAST Document (or XML string) with the vast-client. */
async function parseVastDocument(docOrXml) {
  let doc = docOrXml;
  let xmlWarnings = [];
  const result = {
    ok: false,
    error: null,
    version: null,
    errorURLTemplates: [],
    ads: [],
    warnings: [],
    vastErrors: [],
    xmlWarnings,
  };
  try {
    if (typeof docOrXml === 'string') {
      ({ doc, xmlWarnings } = parseXml(docOrXml));
      result.xmlWarnings = xmlWarnings;
    }
    const parser = new VASTParser();
    parser.on('VAST-warning', (w) => {
      result.warnings.push(String(w && w.message ? w.message : w).trim());
    });
    // VAST-error: errors the library would report to <Error> URLs (e.g. 303
    // no ad, 101 schema problem); ads failing that way are dropped from `ads`.
    parser.on('VAST-error', (e) => {
      result.vastErrors.push({
        code: e && e.ERRORCODE !== undefined ? Number(e.ERRORCODE) : null,
        message: (e && e.ERRORMESSAGE) || '',
      });
    });
    const response = await parser.parseVAST(doc);
    result.version = response.version || null;
    result.errorURLTemplates = urlList(response.errorURLTemplates);
    result.ads = (response.ads || []).map(summariseAd);
    result.ok = true;
  } catch (e) {
    result.error = errorInfo(e);
  }
  return result;
}

/** Parse one VMAP document with @dailymotion/vmap, plus its inline VAST. */
async function parseVmapXml(xml) {
  const result = {
    ok: false,
    error: null,
    version: null,
    adBreaks: [],
    extensions: 0,
    vast: [],
    xmlWarnings: [],
  };
  try {
    const { doc, xmlWarnings } = parseXml(xml);
    result.xmlWarnings = xmlWarnings;
    const vmap = new VMAP(doc);
    result.version = vmap.version;
    result.extensions = (vmap.extensions || []).length;
    const serializer = new XMLSerializer();
    for (const [index, br] of vmap.adBreaks.entries()) {
      const src = br.adSource;
      const entry = {
        timeOffset: br.timeOffset,
        breakType: br.breakType,
        breakId: br.breakId,
        repeatAfter: br.repeatAfter,
        adSource: src
          ? {
              id: src.id,
              allowMultipleAds: src.allowMultipleAds,
              followRedirects: src.followRedirects,
              adTagURI: src.adTagURI
                ? { templateType: src.adTagURI.templateType, uri: src.adTagURI.uri }
                : null,
              vastAdData: Boolean(src.vastAdData),
              customAdData: Boolean(src.customData),
            }
          : null,
        trackingEvents: br.trackingEvents.map((t) => ({ event: t.event, uri: t.uri })),
        extensions: (br.extensions || []).length,
      };
      result.adBreaks.push(entry);
      if (src && src.vastAdData) {
        // Re-parse the embedded <VAST> as a standalone document (the serializer
        // keeps the namespace declarations in scope), like a player would.
        const vastXml = serializer.serializeToString(src.vastAdData);
        const parsed = await parseVastDocument(vastXml);
        parsed.breakIndex = index;
        parsed.breakId = br.breakId;
        result.vast.push(parsed);
      }
    }
    result.ok = true;
  } catch (e) {
    result.error = errorInfo(e);
  }
  return result;
}

async function parseOne(kind, xml) {
  if (kind === 'vast') return parseVastDocument(xml);
  if (kind === 'vmap') return parseVmapXml(xml);
  return { ok: false, error: { name: 'UsageError', message: `unknown kind ${kind}` } };
}

async function main() {
  const mode = process.argv[2];
  const input = readFileSync(0, 'utf8');
  let output;
  if (mode === 'batch') {
    const items = JSON.parse(input);
    output = [];
    for (const item of items) {
      output.push(await parseOne(item.kind, item.xml));
    }
  } else if (mode === 'vast' || mode === 'vmap') {
    output = await parseOne(mode, input);
  } else {
    process.stderr.write('usage: node parse.mjs vast|vmap|batch < input\n');
    process.exit(2);
  }
  process.stdout.write(JSON.stringify(output));
}

main().catch((e) => {
  process.stderr.write(`${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
