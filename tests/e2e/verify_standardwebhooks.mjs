// An independent Standard Webhooks verifier for flowd's end-to-end tests: the npm package
// `standardwebhooks` (declared in /work/main/package.json; `npm ci` in /work/main installs it).
//
// Usage:
//   node verify_standardwebhooks.mjs SECRET HEADERS_JSON BODY_FILE
//       one delivery; BODY_FILE holds the raw body bytes ("-" reads them from stdin)
//   node verify_standardwebhooks.mjs < cases.json
//       a JSON array (or one object) of {"secret", "headers": {...}, "body_b64"}
//
// Prints one JSON line per delivery, {"ok": true} or {"ok": false, "error": "..."}, and exits
// 0 when every delivery verified, 1 when one did not, 2 on bad usage, 3 when the package is
// not installed. The body is handed over as raw bytes (a Buffer), never re-encoded.

import { readFileSync } from "node:fs";

let Webhook;
try {
  ({ Webhook } = (await import("standardwebhooks")).default);
} catch (e) {
  console.error(`cannot load the npm package standardwebhooks (run \`npm ci\` in the repository root): ${e.message}`);
  process.exit(3);
}

function verify(secret, headers, body) {
  try {
    new Webhook(secret).verify(body, headers);
    return { ok: true };
  } catch (e) {
    return { ok: false, error: `${e.name}: ${e.message}` };
  }
}

const args = process.argv.slice(2);
let results;
try {
  if (args.length === 3) {
    const body = readFileSync(args[2] === "-" ? 0 : args[2]);
    results = [verify(args[0], JSON.parse(args[1]), body)];
  } else if (args.length === 0) {
    let cases = JSON.parse(readFileSync(0, "utf8"));
    if (!Array.isArray(cases)) cases = [cases];
    results = cases.map((c) => verify(c.secret, c.headers, Buffer.from(c.body_b64, "base64")));
  } else {
    throw new Error("expected SECRET HEADERS_JSON BODY_FILE, or cases as JSON on stdin");
  }
} catch (e) {
  console.error(`verify_standardwebhooks: ${e.message}`);
  process.exit(2);
}
for (const r of results) console.log(JSON.stringify(r));
process.exit(results.every((r) => r.ok) ? 0 : 1);
