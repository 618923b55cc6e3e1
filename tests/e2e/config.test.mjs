// Configuration sources: flags, IOSWARM_<FLAG> environment variables, a TOML file passed with
// --config (snake_case keys), their precedence (file < environment < flags), and rejection of
// invalid values at start.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, afterEach, describe, test } from "node:test";
import { Ctx, call, connectError, runToExit } from "./harness.mjs";

const T = { timeout: 20_000 };

describe("configuration sources", () => {
  const ctx = new Ctx();
  const dir = mkdtempSync(path.join(tmpdir(), "ioswarm-config-"));
  afterEach(() => ctx.cleanup());
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function expectToken(server, good, bad) {
    const s = await ctx.connect(server.url, { auth: { token: good } });
    assert.deepEqual(await call(s, "ioswarm:echo", "in"), ["in"]);
    for (const token of bad) {
      const c = ctx.client(server.url, { auth: { token } });
      assert.equal((await connectError(c)).message, "unauthorized", `token ${token} must be rejected`);
    }
  }

  test("IOSWARM_AUTH_TOKEN and IOSWARM_CLIENT_ROOMS set the options", T, async () => {
    const server = await ctx.server({ env: { IOSWARM_AUTH_TOKEN: "from-env", IOSWARM_CLIENT_ROOMS: "true" } });
    await expectToken(server, "from-env", ["nope"]);
    const s = await ctx.connect(server.url, { auth: { token: "from-env" } });
    assert.deepEqual(await call(s, "ioswarm:join", "r"), [{ rooms: ["r"] }]);
  });

  test("IOSWARM_NAMESPACES restricts namespaces", T, async () => {
    const server = await ctx.server({ env: { IOSWARM_NAMESPACES: "/,/chat" } });
    await ctx.connect(`${server.url}/chat`);
    assert.equal((await connectError(ctx.client(`${server.url}/other`))).message, "Invalid namespace");
  });

  test("a flag overrides the environment", T, async () => {
    const server = await ctx.server({ flags: ["--auth-token", "from-flag"], env: { IOSWARM_AUTH_TOKEN: "from-env" } });
    await expectToken(server, "from-flag", ["from-env"]);
  });

  test("--config reads a TOML file with snake_case keys", T, async () => {
    const file = path.join(dir, "basic.toml");
    writeFileSync(file, ['auth_token = "from-file"', "client_rooms = true", 'namespaces = ["/", "/chat"]', ""].join("\n"));
    const server = await ctx.server({ flags: ["--config", file] });
    await expectToken(server, "from-file", ["nope"]);
    const s = await ctx.connect(`${server.url}/chat`, { auth: { token: "from-file" } });
    assert.deepEqual(await call(s, "ioswarm:join", ["b", "a"]), [{ rooms: ["a", "b"] }]);
    assert.equal(
      (await connectError(ctx.client(`${server.url}/other`, { auth: { token: "from-file" } }))).message,
      "Invalid namespace",
    );
  });

  test("the environment overrides the file, flags override both", T, async () => {
    const file = path.join(dir, "layered.toml");
    writeFileSync(file, 'auth_token = "from-file"\n');
    const envWins = await ctx.server({ flags: ["--config", file], env: { IOSWARM_AUTH_TOKEN: "from-env" } });
    await expectToken(envWins, "from-env", ["from-file"]);
    const flagWins = await ctx.server({
      flags: ["--config", file, "--auth-token", "from-flag"],
      env: { IOSWARM_AUTH_TOKEN: "from-env" },
    });
    await expectToken(flagWins, "from-flag", ["from-env", "from-file"]);
  });

  for (const [name, flags] of [
    ["a non-numeric --ping-interval-ms", ["--ping-interval-ms", "soon"]],
    ["an unknown flag", ["--no-such-flag"]],
    ["a missing --config file", ["--config", "/nonexistent/ioswarm.toml"]],
  ]) {
    test(`${name} stops the node before it is ready, with a message`, T, async () => {
      const res = await runToExit(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", ...flags]);
      assert.equal(res.signal, null, "the node had to be killed: it did not stop by itself");
      assert.notEqual(res.code, 0);
      assert.doesNotMatch(res.stdout, /ioswarm ready/);
      assert.ok(res.stderr.trim().length > 0, "no message on stderr");
    });
  }

  test("a listen address already in use stops the node with an error", T, async () => {
    const first = await ctx.server();
    const res = await runToExit(["--listen", first.addr, "--admin-listen", "127.0.0.1:0"]);
    assert.equal(res.signal, null);
    assert.notEqual(res.code, 0);
    assert.doesNotMatch(res.stdout, /ioswarm ready/);
  });
});
