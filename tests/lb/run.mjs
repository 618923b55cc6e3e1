// `node tests/lb/run.mjs`: every *.test.mjs here (see ../run-node-tests.mjs). These suites put
// several ioswarm nodes behind a real load balancer and run for LB_TEST_SECONDS (45 by default)
// or longer, so a file gets up to 30 minutes instead of the e2e suites' minute.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { runSuite } from "../run-node-tests.mjs";

runSuite(path.dirname(fileURLToPath(import.meta.url)), "lb", process.argv.slice(2), { testTimeoutMs: 30 * 60_000 });
