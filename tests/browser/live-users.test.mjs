// examples/apps/live-users: the count on every page follows tabs opening and closing on
// different nodes (ioswarm's presence, [[presence]] users:count), and the PHP app's dashboard
// reads the same count with GET users:count.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Demo, WAIT_MS, text, waitText } from "./harness.mjs";

describe("Live users", () => {
  let demo;
  before(async () => {
    demo = await Demo.start("live-users");
  });
  after(() => demo?.stop());

  const shown = (n) => `${n} ${n === 1 ? "person" : "people"} on this page right now`;

  async function everyPageShows(pages, n) {
    for (const page of pages) await waitText(page, "#users", shown(n));
  }

  /**
   * Waits until the PHP app's dashboard (GET users:count on node 2's Redis port) shows `n`,
   * reloading it as a person would: node 2 hears of a tab closing on another node within a few
   * milliseconds of the pages there.
   */
  async function dashboardShows(n) {
    const page = await demo.backend();
    const want = `${n} people on the site right now`;
    const deadline = Date.now() + WAIT_MS;
    while ((await text(page, "#users")) !== want && Date.now() < deadline) await page.reload();
    assert.equal(await text(page, "#users"), want);
    await demo.close(page);
  }

  test("the count goes 1, 2, 3, 2, 3, 2 as tabs open and close on nodes 1, 2 and 3", async (t) => {
    try {
      const open = [];
      for (const [id, n] of [[1, 1], [2, 2], [3, 3]]) {
        open.push(await demo.open(id));
        await everyPageShows(open, n);
      }
      // The tab on node 2 closes: the pages on nodes 1 and 3 show 2.
      await demo.close(open.splice(1, 1)[0]);
      await everyPageShows(open, 2);
      await dashboardShows(2);
      // Another tab on node 3, then the one on node 1 closes.
      open.push(await demo.open(3));
      await everyPageShows(open, 3);
      await demo.close(open.shift());
      await everyPageShows(open, 2);
      await dashboardShows(2);
      await demo.screenshot(open[0]);
      demo.check();
    } catch (e) {
      t.diagnostic(demo.describe());
      throw e;
    }
  });
});
