// examples/apps/thing-update: a person saves a thing in the PHP app; the page open on every node
// shows the new record (Thing::update from the PHP emitter), and a page opened afterwards gets
// it from the PHP app's webhook (Thing::list).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Demo, text, texts, waitTexts } from "./harness.mjs";

describe("Thing::update", () => {
  let demo;
  before(async () => {
    demo = await Demo.start("thing-update");
  });
  after(() => demo?.stop());

  test("a thing saved in the PHP app updates its row on the pages of every node", async (t) => {
    try {
      const pages = [await demo.open(1), await demo.open(2), await demo.open(3)];
      for (const page of pages) await waitTexts(page, "#things tr", ["1 Lamp 3", "2 Desk 1", "3 Chair 12"]);

      // The person edits thing 2 in the PHP app (its emitter publishes on node 2's Redis port).
      const admin = await demo.backend();
      const form = await admin.$("#thing-2");
      await form.$eval("input[name=name]", (e) => (e.value = ""));
      await (await form.$("input[name=name]")).type("Standing desk");
      await form.$eval("input[name=stock]", (e) => (e.value = "7"));
      await Promise.all([admin.waitForNavigation(), (await form.$("button")).click()]);
      assert.equal(await text(admin, "#saved"), "Saved thing 2; every open page shows it.");

      for (const page of pages) await waitTexts(page, "#things tr", ["1 Lamp 3", "2 Standing desk 7", "3 Chair 12"]);
      // A second save of the same thing wins over the first everywhere.
      await admin.$eval("#thing-2 input[name=stock]", (e) => (e.value = "6"));
      await Promise.all([admin.waitForNavigation(), admin.click("#thing-2 button")]);
      for (const page of pages) await waitTexts(page, "#things tr", ["1 Lamp 3", "2 Standing desk 6", "3 Chair 12"]);

      // A page opened now shows the saved record (the PHP app's answer to Thing::list).
      const late = await demo.open(1);
      await waitTexts(late, "#things tr", ["1 Lamp 3", "2 Standing desk 6", "3 Chair 12"]);
      assert.deepEqual(await texts(pages[2], "#things tr.flash .name"), ["Standing desk"], "the updated row is highlighted");
      await demo.screenshot(pages[2]);
      demo.check();
    } catch (e) {
      t.diagnostic(demo.describe());
      throw e;
    }
  });
});
