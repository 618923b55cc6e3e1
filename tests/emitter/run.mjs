// `npm test`: every *.test.mjs here, one file at a time (see ../run-node-tests.mjs).
import path from "node:path";
import { fileURLToPath } from "node:url";
import { runSuite } from "../run-node-tests.mjs";

runSuite(path.dirname(fileURLToPath(import.meta.url)), "emitter e2e");
