// examples/apps/chat: three people on three nodes pick nicknames (the PHP app's connect hook
// refuses a bad one), create, join and leave rooms (room rules; the room list is the PHP app's,
// shared by every page), and send messages: each reaches the other members of its room on
// every node, never a page outside the room, and the sender sees it acknowledged.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { Demo, WAIT_MS, text, texts, waitText, waitTexts } from "./harness.mjs";

describe("Multi-room chat", () => {
  let demo;
  before(async () => {
    demo = await Demo.start("chat");
  });
  after(() => demo?.stop());

  /** A person types `nick` and enters. */
  async function login(page, nick) {
    await demo.focus(page);
    await page.$eval("#nick", (e) => (e.value = ""));
    await page.type("#nick", nick);
    await page.click("#login button");
  }

  /** Opens the page on node `id` as `nick`, and waits until it is in #lobby. */
  async function person(id, nick) {
    const page = await demo.open(id, { connected: false });
    page.label = `${nick} on node ${id}`;
    await login(page, nick);
    await waitText(page, "#me", `You are ${nick}`);
    await waitText(page, "#rooms li.joined", "#lobby Leave");
    return page;
  }

  /** Clicks the Join / Leave button of `room` in the page's room list. */
  async function toggleRoom(page, room, expected) {
    await demo.focus(page);
    await page.click(`#rooms li[data-room="${room}"] button`);
    await waitText(page, `#rooms li[data-room="${room}"] button`, expected);
  }

  /** Sends `message` to `room` and waits for the ack (✓). */
  async function say(page, room, message) {
    await demo.focus(page);
    await page.select("#to", room);
    await page.type("#text", message);
    await page.click("#send button");
    const nick = (await text(page, "#me")).replace("You are ", "");
    await waitFor(page, async () => (await texts(page, "#messages li")).includes(`#${room} ${nick}: ${message} ✓`));
  }

  async function waitFor(page, check) {
    const deadline = Date.now() + WAIT_MS;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`${page.label}: no ✓ within ${WAIT_MS} ms: ${JSON.stringify(await texts(page, "#messages li"))}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  test("messages reach the other members of their room on every node, and nobody else", async (t) => {
    try {
      // A nickname the PHP app refuses: the page says why and the person tries again.
      const carolPage = await demo.open(3, { connected: false });
      carolPage.label = "carol on node 3";
      await login(carolPage, "carol smith");
      await waitText(carolPage, "#login-error", "a nickname is 1 to 20 letters, digits, - or _");
      assert.equal(await text(carolPage, "#status"), "not connected");
      await login(carolPage, "carol");
      await waitText(carolPage, "#me", "You are carol");
      const carol = carolPage;
      const alice = await person(1, "alice");
      const bob = await person(2, "bob");
      for (const page of [alice, bob, carol]) await waitTexts(page, "#rooms li", ["#lobby Leave", "#random Join"]);

      // carol creates #rust: it shows up in every page's room list; she is in it, and leaves #lobby.
      await demo.focus(carol);
      await carol.type("#new-room", "rust");
      await carol.click("#create button");
      await waitTexts(carol, "#rooms li", ["#lobby Leave", "#random Join", "#rust Leave"]);
      await waitTexts(alice, "#rooms li", ["#lobby Leave", "#random Join", "#rust Join"]);
      await waitTexts(bob, "#rooms li", ["#lobby Leave", "#random Join", "#rust Join"]);
      await toggleRoom(carol, "lobby", "Join");
      // A bad room name is refused by the PHP app.
      await carol.type("#new-room", "No Spaces");
      await carol.click("#create button");
      await waitText(carol, "#create-error", "a room name is 1 to 20 of a-z, 0-9 and -");
      // alice joins #rust too: alice in #lobby and #rust, bob in #lobby, carol in #rust.
      await toggleRoom(alice, "rust", "Leave");
      await waitTexts(alice, "#to option", ["#lobby", "#rust"]);
      await demo.roomsKnown();

      await say(alice, "lobby", "hello lobby");
      await waitTexts(bob, "#messages li", ["#lobby alice: hello lobby"]);
      await say(bob, "lobby", "hi alice");
      await say(alice, "rust", "hello rust");
      await waitTexts(carol, "#messages li", ["#rust alice: hello rust"]);
      await say(carol, "rust", "hey");
      await say(alice, "lobby", "bye");
      // Each node delivers one origin's messages in order: a page showing alice's last message
      // already got her earlier ones if they were for it.
      await waitTexts(bob, "#messages li", ["#lobby alice: hello lobby", "#lobby bob: hi alice ✓", "#lobby alice: bye"]);
      await waitTexts(alice, "#messages li", [
        "#lobby alice: hello lobby ✓",
        "#lobby bob: hi alice",
        "#rust alice: hello rust ✓",
        "#rust carol: hey",
        "#lobby alice: bye ✓",
      ]);
      assert.deepEqual(await texts(carol, "#messages li"), ["#rust alice: hello rust", "#rust carol: hey ✓"]);

      // The PHP app's screen counts the members of each room (ioswarm's presence, GET).
      const admin = await demo.backend();
      const want = ["#lobby: 2 people", "#random: 0 people", "#rust: 2 people"];
      const deadline = Date.now() + WAIT_MS;
      while (JSON.stringify(await texts(admin, "#rooms li")) !== JSON.stringify(want) && Date.now() < deadline) await admin.reload();
      assert.deepEqual(await texts(admin, "#rooms li"), want);
      await demo.screenshot(alice);
      demo.check();
    } catch (e) {
      t.diagnostic(demo.describe());
      throw e;
    }
  });
});
