// examples/apps/click-tracking: clicks on pages of three nodes reach the PHP app through the
// webhook (document::clicked), which counts them with INCR on ioswarm's Redis port and emits the
// total (Analytics::counter) to every page; no click is lost, none counted twice.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Demo, text, waitText } from "./harness.mjs";

describe("Click tracking", () => {
  let demo;
  before(async () => {
    demo = await Demo.start("click-tracking");
  });
  after(() => demo?.stop());

  /** A person clicks somewhere on the page. */
  async function click(page) {
    await demo.focus(page);
    await page.mouse.click(400, 300);
  }

  async function everyPageShows(pages, total) {
    for (const page of pages) await waitText(page, "#counter", `${total} clicks on all pages`);
  }

  test("every page shows the total of the clicks on all pages", async (t) => {
    try {
      const pages = [await demo.open(1), await demo.open(2), await demo.open(3)];
      await everyPageShows(pages, 0);
      let total = 0;
      for (const i of [0, 2, 1, 1, 0]) {
        await click(pages[i]);
        await everyPageShows(pages, ++total);
      }
      // Clicks on two nodes at once are both counted.
      await click(pages[0]);
      await click(pages[2]);
      total += 2;
      await everyPageShows(pages, total);
      assert.equal(await text(pages[0], "#mine"), "You clicked 3 times.");
      assert.equal(await text(pages[1], "#mine"), "You clicked 2 times.");
      assert.equal(await text(pages[2], "#mine"), "You clicked 2 times.");

      // The PHP app's own screen reads the same counter, and a page opened now starts from it.
      const admin = await demo.backend();
      assert.equal(await text(admin, "#total"), `${total} clicks so far`);
      const late = await demo.open(3);
      await waitText(late, "#counter", `${total} clicks on all pages`);
      await demo.screenshot(pages[1]);
      demo.check();
    } catch (e) {
      t.diagnostic(demo.describe());
      throw e;
    }
  });
});
