// `npm test`: every *.test.mjs here (one demo of examples/apps each), one file at a time (see
// ../run-node-tests.mjs; its summary line is what scripts/test counts).
import path from "node:path";
import { fileURLToPath } from "node:url";
import { runSuite } from "../run-node-tests.mjs";

runSuite(path.dirname(fileURLToPath(import.meta.url)), "browser");
