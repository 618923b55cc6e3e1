// The first scrape of /metrics, before any client connected: every metric of the README's
// metrics table is listed with its zero value (counters and gauges 0, one series per listed label
// value, histograms with a zero count), as Prometheus dashboards and absent() alerts expect. The
// table is parsed from the README, so the docs and the binary cannot drift apart.
//
// ioswarm's own metrics: the contract (docs/binary-spec.md) only asks for Prometheus text, so with
// IOSWARM_E2E_TARGET=reference this file defines no tests (run.mjs counts skips as failures).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { Ctx, TARGET } from "./harness.mjs";

const T = { timeout: 20_000 };
const README = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "README.md");

/** Rows of the README's metrics table: {name, type, label, values, fromStart, sampled}. */
function readmeMetrics() {
  const text = readFileSync(README, "utf8");
  const section = text.slice(text.indexOf("\n## Metrics\n"), text.indexOf("\n## Tests\n"));
  const rows = [];
  for (const line of section.split("\n")) {
    const cells = line.split("|").slice(1, -1).map((c) => c.trim());
    const name = /^`(ioswarm_[a-z0-9_]+)`$/.exec(cells[0] ?? "")?.[1];
    if (!name) continue;
    const labels = /^`([a-z_]+)`(?: \(([^)]*)\))?$/.exec(cells[2]);
    rows.push({
      name,
      type: cells[1],
      label: labels?.[1],
      values: labels?.[2] ? labels[2].split(",").map((v) => v.trim()) : [],
      fromStart: cells[3].startsWith("yes"),
      // Measured at each read: a queue depth or task count, not a zero on the first scrape.
      sampled: cells[3].endsWith("sampled"),
    });
  }
  return rows;
}

/** `{series: value}` of a Prometheus text exposition (`name` or `name{labels}`). */
function samples(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

const suite = TARGET === "reference" ? () => {} : describe;

suite("/metrics on the first scrape", () => {
  const ctx = new Ctx();
  let server;
  before(async () => {
    server = await ctx.server();
  });
  after(() => ctx.cleanup());

  test("the README's metrics table has a row per metric", T, () => {
    const rows = readmeMetrics();
    assert.ok(rows.length >= 40, `only ${rows.length} rows parsed from the README's metrics table`);
    assert.equal(new Set(rows.map((r) => r.name)).size, rows.length, "a metric listed twice");
  });

  test("lists every metric of the README at zero before any client connects", T, async () => {
    const res = await server.admin("GET", "/metrics");
    assert.equal(res.status, 200);
    const got = samples(res.text);
    const missing = [];
    const expectZero = (series) => {
      if (!got.has(series)) missing.push(series);
      else assert.equal(got.get(series), 0, `${series} on the first scrape`);
    };
    for (const m of readmeMetrics()) {
      if (!m.fromStart) {
        assert.ok(![...got.keys()].some((s) => s.startsWith(`${m.name}{`)), `${m.name} before any peer`);
        continue;
      }
      if (m.type === "histogram") {
        expectZero(`${m.name}_count`);
        expectZero(`${m.name}_sum`);
      } else if (m.label) {
        assert.ok(m.values.length > 0, `${m.name}: the README lists no values of ${m.label}`);
        for (const v of m.values) expectZero(`${m.name}{${m.label}="${v}"}`);
      } else if (m.sampled) {
        if (!got.has(m.name)) missing.push(m.name);
        else assert.ok(got.get(m.name) >= 0, `${m.name} on the first scrape`);
      } else {
        expectZero(m.name);
      }
    }
    assert.deepEqual(missing, [], `missing from the first scrape:\n${res.text}`);
    // The runtime's tasks are counted when read: listeners and timers already run.
    assert.ok(got.get("ioswarm_runtime_tasks") > 0, res.text);
    assert.equal(got.get("ioswarm_engine_queued_packets"), 0, "nothing queued without a client");
  });

  test("every metric on /metrics is in the README's table", T, async () => {
    const res = await server.admin("GET", "/metrics");
    const documented = new Set(readmeMetrics().map((m) => m.name));
    const undocumented = new Set();
    for (const series of samples(res.text).keys()) {
      const name = series.replace(/\{.*$/, "").replace(/_(bucket|sum|count)$/, "");
      if (name.startsWith("ioswarm_") && !documented.has(name) && !documented.has(series.replace(/\{.*$/, ""))) {
        undocumented.add(name);
      }
    }
    assert.deepEqual([...undocumented], []);
  });
});
