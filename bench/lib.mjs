// Helpers shared by the Node bench scripts (connect-auth.mjs, forward.mjs, tls.mjs).
import { readFileSync } from "node:fs";

/** CPU seconds (user + system) process `pid` used so far (Linux; clock ticks at 100 Hz). */
export function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The `p`th percentile (0–100, nearest rank) of `xs` (NaN when empty). */
export function percentile(xs, p) {
  if (xs.length === 0) return NaN;
  const sorted = Float64Array.from(xs).sort();
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** The median of `xs`. */
export const median = (xs) => percentile(xs, 50);
