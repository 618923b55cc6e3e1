// examples/apps/alerts-toggle: people turn important alerts on or off with a button (the room
// rules AlertToggle::join / AlertToggle::leave); when the PHP app deletes a thing, every page
// lists it, and only the pages whose alerts are on show Thing::delete::important.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Demo, text, waitText, waitTexts } from "./harness.mjs";

describe("Alerts toggle", () => {
  let demo;
  before(async () => {
    demo = await Demo.start("alerts-toggle");
  });
  after(() => demo?.stop());

  /** Clicks the page's toggle and waits for the state the server acknowledged. */
  async function toggle(page, expected) {
    await demo.focus(page);
    await page.click("#toggle");
    await waitText(page, "#alerts-state", `Important alerts: ${expected}`);
    await waitText(page, "#toggle", `Turn important alerts ${expected === "on" ? "off" : "on"}`);
  }

  /** Deletes thing `id` in the PHP app (its emitter publishes on node 2's Redis port). */
  async function remove(admin, id, important) {
    await demo.focus(admin);
    if (important) await admin.click(`#thing-${id} input[name=important]`);
    await Promise.all([admin.waitForNavigation(), admin.click(`#thing-${id} button`)]);
  }

  test("only the pages with alerts on get the important delete; every page lists every delete", async (t) => {
    try {
      const [p1, p2, p3] = [await demo.open(1), await demo.open(2), await demo.open(3)];
      for (const page of [p1, p2, p3]) assert.equal(await text(page, "#alerts-state"), "Important alerts: off");
      await toggle(p1, "on");
      await toggle(p3, "on");
      await toggle(p3, "off");
      await demo.roomsKnown();

      const admin = await demo.backend();
      await remove(admin, 4, true);
      assert.equal(await text(admin, "#deleted"), "Deleted Server rack.");
      await remove(admin, 1, false);
      // Both deletes were published in this order on one connection: a page showing the second
      // one already got the first one if it was for it.
      const activity = ["Server rack (#4) was deleted", "Lamp (#1) was deleted"];
      for (const page of [p1, p2, p3]) await waitTexts(page, "#activity li", activity);
      await waitTexts(p1, "#alerts li", ["Important: Server rack (#4) was deleted"]);
      await waitTexts(p2, "#alerts li", []);
      await waitTexts(p3, "#alerts li", []);

      // The page on node 2 turns alerts on; the next important delete reaches it and node 1's.
      await toggle(p2, "on");
      await demo.roomsKnown();
      await remove(admin, 2, true);
      activity.push("Desk (#2) was deleted");
      for (const page of [p1, p2, p3]) await waitTexts(page, "#activity li", activity);
      await waitTexts(p1, "#alerts li", ["Important: Server rack (#4) was deleted", "Important: Desk (#2) was deleted"]);
      await waitTexts(p2, "#alerts li", ["Important: Desk (#2) was deleted"]);
      await waitTexts(p3, "#alerts li", []);
      await demo.screenshot(p1);
      demo.check();
    } catch (e) {
      t.diagnostic(demo.describe());
      throw e;
    }
  });
});
