// The classic alert toggle with a backend emitter: the page joins a room with its own event name
// (a [[rooms.rule]] in the --config file), @socket.io/redis-emitter over node-redis publishes to
// that room through the Redis ingress, and the page stops receiving after its leave event.
// ioswarm only: the reference server has no rule table.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { Ctx, QUIET_MS, TARGET, WAIT_MS, once, probe, record, sleep } from "./harness.mjs";

const ROOM = "ROOM::ExtraImportantUpdates";
const RULES = `
[[rooms.rule]]
event = "AlertToggle::join"
join = "${ROOM}"

[[rooms.rule]]
event = "AlertToggle::leave"
leave = "${ROOM}"
`;

(TARGET === "ioswarm" ? describe : () => {})("room rules with a Redis emitter", () => {
  const t = new Ctx();
  const dir = mkdtempSync(path.join(tmpdir(), "ioswarm-emitter-rules-"));
  let server;
  let emitter;

  before(async () => {
    const file = path.join(dir, "rules.toml");
    writeFileSync(file, RULES);
    server = await t.server(["--config", file]);
    emitter = await t.emitter(server, "node-redis 4");
  });
  after(async () => {
    await t.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  test("AlertToggle::join, an emitter broadcast to the room reaches the page, not after AlertToggle::leave", async () => {
    const page = await t.connect(server);
    const other = await t.connect(server);
    await probe(emitter, page);
    const missed = record(other, "alert");

    assert.deepEqual(await page.timeout(WAIT_MS).emitWithAck("AlertToggle::join"), { rooms: [ROOM] });
    const first = once(page, "alert");
    emitter.to(ROOM).emit("alert", { level: "critical", text: "disk full" });
    assert.deepEqual(await first, [{ level: "critical", text: "disk full" }]);

    assert.deepEqual(await page.timeout(WAIT_MS).emitWithAck("AlertToggle::leave"), { rooms: [] });
    const late = record(page, "alert");
    emitter.to(ROOM).emit("alert", { level: "info", text: "after leave" });
    // A namespace-wide marker sent after the room broadcast: once it arrives, the room broadcast
    // has been processed too (the ingress runs one publisher's messages in order).
    const marker = once(page, "marker");
    emitter.emit("marker");
    await marker;
    await sleep(QUIET_MS);
    assert.deepEqual(late, [], "no alert after AlertToggle::leave");
    assert.deepEqual(missed, [], "a page that never toggled gets nothing");
  });
});
