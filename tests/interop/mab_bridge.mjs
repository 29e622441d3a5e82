// A bridge built on matrix-appservice-bridge (npm), the Node framework
// bridges are built on, driving a homeserver through the Application Service API.
//
// Usage:
//   node mab_bridge.mjs first|second HS_URL SERVER_NAME REGISTRATION ALICE_TOKEN STATE N MAB_DIR
//
// `first`: the bot checks in, the bridge pings itself through a room, a puppet
// (`bridge.getIntent(userId)`) is registered, invited by alice (a normal user)
// and joins; it masquerades (whoami, a message, a display name); alice's
// message, typing and read receipt reach the controller; an alias query is
// answered by creating the room. Then the bridge closes its HTTP server, alice
// sends N messages while it is down, and the process exits.
// `second`: a new process on the same port must receive those N messages, in
// order, each once, and nothing it had already received before.
//
// Prints `ok: ...` per step and a final `P passed, F failed`; exits 0 when all passed.

import { createRequire } from "node:module";
import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

const [phase, hsUrl, server, regPath, aliceToken, statePath, nText, mabDir] = process.argv.slice(2);
const n = Number(nText);
const require = createRequire(path.join(mabDir, "package.json"));
const { Bridge, AppServiceRegistration, Logger } = require("matrix-appservice-bridge");
Logger.configure({ console: "warn" });

let passed = 0;
function check(cond, what) {
    if (!cond) {
        console.log(`FAILED: ${what}`);
        console.log(`${passed} passed, 1 failed`);
        process.exit(1);
    }
    passed += 1;
    console.log(`ok: ${what}`);
}

async function waitFor(cond, what, limitMs = 20000) {
    const deadline = Date.now() + limitMs;
    while (!cond()) {
        if (Date.now() > deadline) check(false, `${what} (timed out after ${limitMs / 1000} s)`);
        await new Promise((r) => setTimeout(r, 50));
    }
}

/// Alice, a normal user, through the Client-Server API.
async function alice(method, p, body) {
    const r = await fetch(`${hsUrl}/_matrix/client/v3${p}`, {
        method,
        headers: { authorization: `Bearer ${aliceToken}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(`alice ${method} ${p}: ${r.status} ${JSON.stringify(json)}`);
    return json;
}
let txn = 0;
const aliceSend = async (room, body) =>
    (await alice("PUT", `/rooms/${encodeURIComponent(room)}/send/m.room.message/mab-${phase}-${Date.now()}-${txn++}`, { msgtype: "m.text", body })).event_id;

const reg = AppServiceRegistration.fromObject(
    // js-yaml comes with the framework.
    require("js-yaml").load(readFileSync(regPath, "utf8")),
);
const port = Number(new URL(reg.getAppServiceUrl()).port);
const id = reg.getId();

const events = [];
const ephemeral = [];
const aliasRooms = {};
const bridge = new Bridge({
    homeserverUrl: hsUrl,
    domain: server,
    registration: regPath,
    disableStores: true,
    controller: {
        onEvent: (request) => {
            events.push(request.getData());
        },
        onEphemeralEvent: (request) => {
            ephemeral.push(request.getData());
        },
        // A bridge creates portal rooms on demand: `#mab_<name>:server`.
        onAliasQuery: (alias, localpart) => ({ creationOpts: { room_alias_name: localpart, name: `portal ${localpart}` } }),
        onAliasQueried: (alias, roomId) => {
            aliasRooms[alias] = roomId;
        },
    },
});

const messages = (room) => events.filter((e) => e.type === "m.room.message" && e.room_id === room);

async function first() {
    await bridge.run(port, undefined, "127.0.0.1");
    check(bridge.opts.registration !== undefined && reg.pushEphemeral === true, "the bridge starts with pushEphemeral from the registration");
    const bot = bridge.getIntent();
    const who = await bot.matrixClient.getWhoAmI();
    check(who.user_id === `@${reg.getSenderLocalpart()}:${server}`, `the bot is registered and whoami names it (${who.user_id})`);

    const me = await alice("GET", "/account/whoami");
    const aliceId = me.user_id;
    const room = (await alice("POST", "/createRoom", { name: "mab bridged room" })).room_id;
    check(room.startsWith("!"), `alice creates a room (${room})`);
    await alice("POST", `/rooms/${encodeURIComponent(room)}/invite`, { user_id: bot.userId });
    await bot.join(room);
    const took = await bridge.pingAppserviceRoute(room, 20000);
    check(took >= 0, `the homeserver pings the bridge (pingAppserviceRoute through the room: ${took} ms)`);

    const puppetId = `@${id}_alice:${server}`;
    const puppet = bridge.getIntent(puppetId);
    await puppet.ensureRegistered();
    const pwho = await puppet.matrixClient.getWhoAmI();
    check(pwho.user_id === puppetId, `the puppet is registered and masquerades (whoami: ${pwho.user_id})`);
    await puppet.setDisplayName("Puppet Alice (bridged)");
    const profile = await alice("GET", `/profile/${encodeURIComponent(puppetId)}`);
    check(profile.displayname === "Puppet Alice (bridged)", `the puppet sets its display name (${profile.displayname})`);

    await alice("POST", `/rooms/${encodeURIComponent(room)}/invite`, { user_id: puppetId });
    await waitFor(
        () => events.some((e) => e.type === "m.room.member" && e.state_key === puppetId && e.content.membership === "invite"),
        "the puppet's invite reaches the bridge",
    );
    check(true, "the puppet's invite reaches the bridge in a transaction");
    await puppet.join(room);
    const members = await puppet.matrixClient.getJoinedRoomMembers(room);
    check(members.includes(puppetId) && members.includes(aliceId), `the puppet joins alice's room (${members.sort().join(", ")})`);

    const sent = (await puppet.sendText(room, "hello from the bridged side")).event_id;
    const got = await alice("GET", `/rooms/${encodeURIComponent(room)}/event/${encodeURIComponent(sent)}`);
    check(got.sender === puppetId, `the puppet's message is sent as the puppet (${got.sender})`);
    check(got.content.body === "hello from the bridged side", "alice reads the puppet's message");

    const mine = await aliceSend(room, "hello bridge, from alice");
    await waitFor(() => messages(room).some((e) => e.event_id === mine), "alice's message reaches the bridge");
    const evt = messages(room).find((e) => e.event_id === mine);
    check(evt.sender === aliceId && evt.content.body === "hello bridge, from alice", "alice's message reaches the bridge's onEvent");

    await alice("PUT", `/rooms/${encodeURIComponent(room)}/typing/${encodeURIComponent(aliceId)}`, { typing: true, timeout: 10000 });
    await waitFor(
        () => ephemeral.some((e) => e.type === "m.typing" && e.room_id === room && e.content.user_ids.includes(aliceId)),
        "alice's typing reaches the bridge",
    );
    check(true, "alice's typing reaches the bridge as an ephemeral event (onEphemeralEvent)");
    await alice("POST", `/rooms/${encodeURIComponent(room)}/receipt/m.read/${encodeURIComponent(sent)}`, {});
    await waitFor(
        () => ephemeral.some((e) => e.type === "m.receipt" && e.room_id === room && e.content[sent]?.["m.read"]?.[aliceId]),
        "alice's read receipt reaches the bridge",
    );
    check(true, "alice's read receipt of the puppet's message reaches the bridge as an ephemeral event");

    const alias = `#${id}_lobby:${server}`;
    const info = await alice("GET", `/directory/room/${encodeURIComponent(alias)}`);
    check(alias in aliasRooms, "the homeserver asks the bridge about the unknown alias (onAliasQuery)");
    check(info.room_id === aliasRooms[alias], `the alias resolves to the room the bridge created (${info.room_id})`);

    await bridge.appservice.close();
    check(true, "the bridge closes its HTTP server");
    const ids = [];
    for (let i = 0; i < n; i++) ids.push(await aliceSend(room, `missed ${i}`));
    check(ids.length === n, `alice sends ${n} messages while the bridge is down`);
    await new Promise((r) => setTimeout(r, 2000));
    const seen = events.map((e) => e.event_id);
    check(!ids.some((i) => seen.includes(i)), "nothing sent while down reached the closed bridge");
    writeFileSync(statePath, JSON.stringify({ room, missed: ids, seen, alice: aliceId }));
}

async function second() {
    const st = JSON.parse(readFileSync(statePath, "utf8"));
    const started = Date.now();
    await bridge.run(port, undefined, "127.0.0.1");
    check(true, "the bridge is back on its port (a new process)");
    // A bridge at start-up shows life to the homeserver, which ends its backoff.
    await bridge.getIntent().matrixClient.getWhoAmI();
    const { room, missed } = st;
    await waitFor(() => messages(room).filter((e) => missed.includes(e.event_id)).length >= missed.length, `the ${n} missed messages`, 60000);
    const got = messages(room).filter((e) => missed.includes(e.event_id));
    check(
        JSON.stringify(got.map((e) => e.event_id)) === JSON.stringify(missed),
        `every missed message arrives, in order (${got.length} in ${((Date.now() - started) / 1000).toFixed(1)} s)`,
    );
    check(JSON.stringify(got.map((e) => e.content.body)) === JSON.stringify(missed.map((_, i) => `missed ${i}`)), "their bodies are alice's, in order");
    const last = await aliceSend(room, "after the restart");
    await waitFor(() => events.some((e) => e.event_id === last), "a new message after the restart");
    await new Promise((r) => setTimeout(r, 1000));
    const all = events.map((e) => e.event_id);
    check(all.length === new Set(all).size, `no event arrives twice (${all.length} events)`);
    const again = all.filter((i) => st.seen.includes(i));
    check(again.length === 0, `nothing delivered before the restart is delivered again (${JSON.stringify(again)})`);
    await bridge.appservice.close();
}

try {
    await (phase === "first" ? first() : second());
    console.log(`${passed} passed, 0 failed`);
    process.exit(0);
} catch (e) {
    console.log(`FAILED: ${e?.stack ?? e}`);
    console.log(`${passed} passed, 1 failed`);
    process.exit(1);
}
