// Shared runner of the Node end-to-end suites (tests/e2e, tests/emitter): runs every *.test.mjs
// file of a folder one at a time with node:test, prints the spec report, and fails unless at
// least one test ran and none failed, was cancelled, skipped or left todo. Extra arguments are
// passed to `node --test` (e.g. `npm test -- --test-name-pattern=relay`), in which case skipped
// tests (filtered out) are allowed. Node built-ins only, so every suite can import it.
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";


/**
 * Runs the suite in folder `HERE`, labelled `label` in the summary line; exits 1 on failure.
 * `testTimeoutMs` bounds each test file (node --test applies it to a file as a whole).
 */
export function runSuite(HERE, label, extra = process.argv.slice(2), { testTimeoutMs = 60_000 } = {}) {
  const files = readdirSync(HERE)
    .filter((f) => f.endsWith(".test.mjs"))
    .sort();
  const dir = mkdtempSync(path.join(tmpdir(), `ioswarm-${label.replace(/\W+/g, "-")}-`));
  const tap = path.join(dir, "report.tap");

  const res = spawnSync(
    process.execPath,
    [
      "--test",
      "--test-concurrency=1",
      `--test-timeout=${testTimeoutMs}`,
      "--test-reporter=spec",
      "--test-reporter-destination=stdout",
      "--test-reporter=tap",
      `--test-reporter-destination=${tap}`,
      ...extra,
      ...files,
    ],
    { cwd: HERE, stdio: "inherit" },
  );

  const summary = {};
  for (const line of readFileSync(tap, "utf8").split("\n")) {
    const m = /^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$/.exec(line);
    if (m) summary[m[1]] = Number(m[2]);
  }
  rmSync(dir, { recursive: true, force: true });

  const problems = [];
  if (res.status !== 0) problems.push(`node --test exited with ${res.status ?? res.signal}`);
  if (!(summary.tests > 0)) problems.push("no test ran");
  if (summary.fail) problems.push(`${summary.fail} failed`);
  if (summary.cancelled) problems.push(`${summary.cancelled} cancelled`);
  if (summary.todo) problems.push(`${summary.todo} todo`);
  if (summary.skipped && extra.length === 0) problems.push(`${summary.skipped} skipped`);
  const target = process.env.IOSWARM_E2E_TARGET ?? "ioswarm";
  console.log(`\n${label} summary (target=${target}): ${JSON.stringify(summary)}`);
  if (problems.length > 0) {
    console.error(`${label} FAILED: ${problems.join(", ")}`);
    process.exit(1);
  }
}
