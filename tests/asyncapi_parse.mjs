// Parse AsyncAPI documents with the official parser and its Avro schema parser; for each document print
// one JSON line: the packages' versions, the diagnostics, and what the parsed document holds.
//
// Usage: node tests/asyncapi_parse.mjs PACKAGES_DIR DOCUMENT...
//   PACKAGES_DIR: where `npm install --prefix` put @asyncapi/parser and @asyncapi/avro-schema-parser.
// Used by tests/integration/test_asyncapi_parser.py.
//
// For AsyncAPI 3 documents the parser checks an Avro payload against the specification's Avro JSON schema
// and converts it, but does not run the Avro schema parser's own validation (avsc): this script runs it on
// every Avro payload too and reports its findings as errors (code "avro-schema").

import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";

const [packagesDir, ...documentPaths] = process.argv.slice(2);
if (!packagesDir || documentPaths.length === 0) {
  process.stderr.write("usage: node asyncapi_parse.mjs PACKAGES_DIR DOCUMENT...\n");
  process.exit(2);
}
const require = createRequire(join(resolve(packagesDir), "package.json"));
const { Parser } = require("@asyncapi/parser");
const { AvroSchemaParser } = require("@asyncapi/avro-schema-parser");
const packageVersion = async (name) =>
  JSON.parse(await readFile(join(resolve(packagesDir), "node_modules", name, "package.json"), "utf8")).version;

const SEVERITIES = ["error", "warning", "information", "hint"];

const AVRO = "application/vnd.apache.avro;version=1.9.0";
const ORIGINAL_PAYLOAD = "x-parser-original-payload";
const versions = {
  parser: await packageVersion("@asyncapi/parser"),
  avroSchemaParser: await packageVersion("@asyncapi/avro-schema-parser"),
};
const parser = new Parser({ schemaParsers: [AvroSchemaParser()] });

const diagnostic = (d) => ({
  severity: SEVERITIES[d.severity] ?? String(d.severity),
  code: String(d.code),
  message: d.message,
  path: d.path.join("/"),
});

async function avroDiagnostics(messages) {
  const found = [];
  for (const message of messages) {
    const payload = message.json().payload ?? {};
    if (message.schemaFormat() !== AVRO || payload[ORIGINAL_PAYLOAD] === undefined) continue;
    const path = ["components", "messages", message.id(), "payload", "schema"];
    const input = { data: payload[ORIGINAL_PAYLOAD], path, schemaFormat: AVRO, meta: {} };
    for (const problem of await parser.parserRegistry.get(AVRO).validate(input)) {
      found.push({ severity: "error", code: "avro-schema", message: problem.message, path: path.join("/") });
    }
  }
  return found;
}

for (const documentPath of documentPaths) {
  const source = await readFile(documentPath, "utf8");
  const { document, diagnostics } = await parser.parse(source, { source: resolve(documentPath) });
  const messages = document ? document.components().messages().all() : [];
  const result = {
    document: documentPath,
    ...versions,
    parsed: document !== undefined,
    diagnostics: [...diagnostics.map(diagnostic), ...(await avroDiagnostics(messages))],
    channels: document ? document.channels().all().map((channel) => channel.id()) : [],
    operations: document ? document.operations().all().map((operation) => operation.id()) : [],
    messages: messages.map((message) => message.name()),
    avroPayloads: messages.filter((message) => message.schemaFormat() === AVRO).map((message) => message.name()),
  };
  process.stdout.write(JSON.stringify(result) + "\n");
}
