/**
 * The committed types (src/schema.ts) must be what `npm run generate` makes
 * from the OpenAPI document of the corral binary under test.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import { pathToFileURL } from "node:url";

import { corralBin, PACKAGE_DIR } from "./helpers.js";

/** `diff -u` of the committed file against the regenerated text. */
function unifiedDiff(committed: string, generated: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), "corral-ts-drift-"));
  try {
    const fresh = path.join(dir, "schema.ts");
    writeFileSync(fresh, generated);
    try {
      execFileSync(
        "diff",
        ["-u", "--label", "src/schema.ts (committed)", "--label", "src/schema.ts (generated)", committed, fresh],
        { encoding: "utf8" },
      );
      return "";
    } catch (e) {
      const { stdout } = e as { stdout?: string };
      if (stdout) return stdout;
      // No `diff` here: the first line that differs.
      const [a, b] = [readFileSync(committed, "utf8").split("\n"), generated.split("\n")];
      const line = a.findIndex((text, i) => text !== b[i]);
      const at = line === -1 ? a.length : line;
      return `line ${at + 1}:\n- ${a[at] ?? "(end of file)"}\n+ ${b[at] ?? "(end of file)"}\n`;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("src/schema.ts is what the binary's OpenAPI document generates", async () => {
  const script = pathToFileURL(path.join(PACKAGE_DIR, "scripts", "generate-schema.mjs")).href;
  const { generate, SCHEMA_PATH } = (await import(script)) as {
    generate(bin: string): Promise<string>;
    SCHEMA_PATH: string;
  };
  const generated = await generate(corralBin());
  const committed = readFileSync(SCHEMA_PATH, "utf8");
  if (generated !== committed) {
    assert.fail(
      `src/schema.ts differs from what \`${corralBin()} openapi\` generates; ` +
        `run \`CORRAL_BIN=${corralBin()} npm run generate\` and commit it:\n${unifiedDiff(SCHEMA_PATH, generated)}`,
    );
  }
});
