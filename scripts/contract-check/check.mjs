// Validate AsyncAPI documents with the official parser (@asyncapi/parser): schema, references
// and the parser's ruleset. Prints every diagnostic; exits 1 when one is an error.
//   node check.mjs contract.yaml [more.yaml ...]
import { readFile } from "node:fs/promises";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const parser = new Parser();
const names = { 0: "error", 1: "warning", 2: "info", 3: "hint" };
let failed = false;
for (const file of process.argv.slice(2)) {
  const text = await readFile(file, "utf8");
  const { document, diagnostics } = await parser.parse(text, { source: file });
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  for (const d of diagnostics) {
    const where = d.path && d.path.length ? d.path.join(".") : "(document)";
    console.log(`${file}: ${names[d.severity] ?? d.severity}: ${d.code}: ${d.message} at ${where}`);
  }
  if (!document || errors.length) {
    failed = true;
    console.log(`${file}: INVALID (${errors.length} error(s))`);
  } else {
    console.log(`${file}: valid AsyncAPI ${document.version()}: ${document.channels().length} channels, ` +
      `${document.allMessages().length} messages, ${diagnostics.length - errors.length} warning(s)/hint(s)`);
  }
}
if (process.argv.length < 3) {
  console.error("usage: node check.mjs FILE...");
  failed = true;
}
process.exit(failed ? 1 : 0);
