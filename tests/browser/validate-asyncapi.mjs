// Validates docs/asyncapi.yaml with the AsyncAPI Initiative's own parser (@asyncapi/parser):
// the document must parse as AsyncAPI 3.0 with no error-level diagnostic. Prints the
// diagnostics as JSON lines on stderr; exits 1 on any error.
//
// usage: node validate-asyncapi.mjs <path-to-asyncapi.yaml>
import fs from 'node:fs';
import { Parser } from '@asyncapi/parser';

const [file] = process.argv.slice(2);
if (!file) {
  console.error('usage: node validate-asyncapi.mjs <asyncapi.yaml>');
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(fs.readFileSync(file, 'utf8'));
// Severity 0 is an error in the parser's (Spectral's) scale.
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  console.error(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path.join('.') }));
}
if (!document || errors.length) {
  console.error(`${errors.length} error(s) in ${file}`);
  process.exit(1);
}
console.log(JSON.stringify({
  version: document.version(),
  channels: document.channels().all().map((c) => c.address()),
  operations: document.operations().length,
  messages: document.allMessages().length,
}));
