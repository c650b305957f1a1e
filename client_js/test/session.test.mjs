// The session state machine, h11-style: a client and a server core joined
// through a fake link that can lose, duplicate and delay batches. No network,
// no event loop, no clock: `now` is a number the test moves.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Session, SessionState, BufferFull, LocalProtocolError, RemoteProtocolError, sessionFrames } from "../src/session.js";

const TOKEN = Uint8Array.from({ length: 32 }, (_, i) => i + 1);

function pair(config = {}) {
  const client = new Session({ sessionId: "sess-1", token: TOKEN, isClient: true, now: 0, config });
  const server = new Session({ sessionId: "sess-1", token: TOKEN, isClient: false, now: 0, config });
  client.transportAttached(0);
  server.transportAttached(0);
  return { client, server };
}

/** Move one batch from `a` to `b`; returns it (delivered unless `drop`). */
function hop(a, b, now = 0, { drop = false } = {}) {
  const batch = a.dataToSend(now);
  if (batch.length && !drop) b.receiveData(batch, now);
  return batch;
}

/** Exchange batches until both sides are quiet. */
function settle(a, b, now = 0) {
  for (let i = 0; i < 100; i++) {
    const x = hop(a, b, now);
    const y = hop(b, a, now);
    if (!x.length && !y.length) return;
  }
  throw new Error("did not settle");
}

const ofType = (events, type) => events.filter((e) => e.type === type);
const received = (s) => ofType(s.eventsReceived(), "message").map((e) => (typeof e.data === "string" ? e.data : [...e.data]));

test("messages flow both ways, whole and in order, text and binary", () => {
  const { client, server } = pair();
  client.sendMessage("one");
  client.sendMessage(Uint8Array.of(1, 2, 3));
  client.sendMessage("");
  server.sendMessage("back");
  settle(client, server);
  assert.deepEqual(received(server), ["one", [1, 2, 3], ""]);
  assert.deepEqual(received(client), ["back"]);
  assert.equal(client.bufferedBytes, 0, "everything acked");
  assert.equal(server.bufferedBytes, 0);
});

test("the first batch of a transport starts with HELLO; the client's carries the token", () => {
  const { client, server } = pair();
  const [hello] = sessionFrames.decode(client.dataToSend(0));
  assert.equal(hello.type, 1);
  assert.deepEqual([...hello.token], [...TOKEN]);
  const [serverHello] = sessionFrames.decode(server.dataToSend(0));
  assert.equal(serverHello.token, null);
});

test("a message larger than a fragment is cut and reassembled", () => {
  const { client, server } = pair({ fragmentSize: 1000 });
  const big = Uint8Array.from({ length: 10_500 }, (_, i) => i % 251);
  client.sendMessage(big);
  client.sendMessage("é".repeat(3000));
  assert.equal(client.bufferedFrames, 11 + 6);
  settle(client, server);
  const [first, second] = received(server);
  assert.deepEqual(first, [...big]);
  assert.equal(second, "é".repeat(3000));
});

test("a lost batch is retransmitted after retransmitTimeout, delivered once", () => {
  const { client, server } = pair({ retransmitTimeout: 5 });
  client.sendMessage("a");
  client.sendMessage("b");
  hop(client, server, 0, { drop: true });
  settle(client, server, 1);
  assert.deepEqual(received(server), []);
  assert.ok(client.nextDeadline() <= 5);
  client.handleTimer(5);
  settle(client, server, 5);
  assert.deepEqual(received(server), ["a", "b"]);
  client.handleTimer(20);
  settle(client, server, 20);
  assert.deepEqual(received(server), [], "no duplicate");
});

test("resume on a new transport replays what was in flight: nothing lost, duplicated or reordered", () => {
  const { client, server } = pair();
  const sent = [];
  const got = [];
  let n = 0;
  const send = (k) => {
    for (let i = 0; i < k; i++) client.sendMessage(String(++n)), sent.push(String(n));
  };
  send(3);
  hop(client, server); // delivered
  got.push(...received(server));
  send(3);
  const lost = hop(client, server, 0, { drop: true }); // in flight when the transport died
  assert.ok(lost.length);
  send(2); // queued while there is no transport
  client.transportLost(1);
  server.transportLost(1);
  assert.equal(client.dataToSend(1).length, 0, "nothing goes out without a transport");
  client.transportAttached(2);
  server.transportAttached(2);
  // The old transport's batch turns up late on the new one: a duplicate.
  server.receiveData(lost, 2);
  settle(client, server, 2);
  got.push(...received(server));
  assert.deepEqual(got, sent);
});

test("duplicates and gaps are discarded, and still acknowledged", () => {
  const { client, server } = pair();
  client.sendMessage("1");
  const first = client.dataToSend(0);
  client.sendMessage("2");
  const second = client.dataToSend(0);
  server.receiveData(second, 0); // a gap: discarded
  assert.deepEqual(received(server), []);
  server.receiveData(first, 0);
  server.receiveData(first, 0); // a duplicate
  assert.deepEqual(received(server), ["1"]);
  assert.ok(server.wantsWrite, "an ACK is due");
  client.rewind(0);
  settle(client, server);
  assert.deepEqual(received(server), ["2"]);
});

test("backpressure: BufferFull when the replay buffer is full, window-opened after the ack", () => {
  const { client, server } = pair({ maxBufferFrames: 2 });
  client.sendMessage("a");
  client.sendMessage("b");
  assert.equal(client.writable, false);
  assert.throws(() => client.sendMessage("c"), BufferFull);
  settle(client, server);
  assert.equal(client.writable, true);
  assert.equal(ofType(client.eventsReceived(), "window-opened").length, 1);
  client.sendMessage("c");
  settle(client, server);
  assert.deepEqual(received(server), ["a", "b", "c"]);
});

test("a message bigger than the buffer is admitted fragment by fragment as acks come", () => {
  const { client, server } = pair({ fragmentSize: 1000, maxBufferBytes: 3000 });
  const big = new Uint8Array(20_000).fill(7);
  client.sendMessage(big);
  assert.ok(client.bufferedFrames <= 3);
  assert.equal(client.writable, false);
  settle(client, server);
  const [got] = received(server);
  assert.equal(got.length, 20_000);
  assert.equal(client.writable, true);
});

test("graceful close: CLOSE after the data, both sides report the code once", () => {
  const { client, server } = pair();
  client.sendMessage("last words");
  client.close(1000, "bye", 0);
  assert.throws(() => client.sendMessage("more"), LocalProtocolError);
  settle(client, server);
  const serverEvents = server.eventsReceived();
  assert.deepEqual(ofType(serverEvents, "message").map((e) => e.data), ["last words"]);
  assert.deepEqual(ofType(serverEvents, "closed"), [{ type: "closed", code: 1000, reason: "bye", byPeer: true }]);
  assert.deepEqual(ofType(client.eventsReceived(), "closed"), [{ type: "closed", code: 1000, reason: "bye", byPeer: false }]);
  assert.equal(client.state, SessionState.CLOSED);
  assert.equal(server.state, SessionState.CLOSED);
  assert.equal(client.nextDeadline(), null);
});

test("close timeout: 4004 when the peer never confirms", () => {
  const { client } = pair({ closeTimeout: 3 });
  client.close(1000, "", 0);
  client.handleTimer(3);
  assert.deepEqual(ofType(client.eventsReceived(), "closed")[0].code, 4004);
});

test("a protocol error closes the session with an ABORT the peer understands", () => {
  const { client, server } = pair();
  assert.throws(() => server.receiveData(Uint8Array.of(0x81, 0xa1, 0x61, 0x01), 0), (e) => e instanceof RemoteProtocolError && e.code === 1002);
  assert.equal(server.state, SessionState.CLOSED);
  assert.equal(ofType(server.eventsReceived(), "closed")[0].code, 1002);
  const batch = server.dataToSend(0);
  client.receiveData(batch, 0);
  const [closed] = ofType(client.eventsReceived(), "closed");
  assert.equal(closed.code, 1002);
  assert.equal(closed.byPeer, true);
});

test("frames before the bad one in a batch still take effect", () => {
  const { client, server } = pair();
  client.sendMessage("ok");
  const good = client.dataToSend(0);
  const batch = new Uint8Array([...good, 0xc1]);
  assert.throws(() => server.receiveData(batch, 0), RemoteProtocolError);
  assert.deepEqual(received(server), ["ok"]);
});

test("HELLO checks: token (4001), session id (4002), version (4003)", () => {
  const cases = [
    [sessionFrames.hello(1, "sess-1", 0, new Uint8Array(32)), 4001],
    [sessionFrames.hello(1, "sess-1", 0, null), 4001],
    [sessionFrames.hello(1, "other", 0, TOKEN), 4002],
    [sessionFrames.hello(2, "sess-1", 0, TOKEN), 4003],
  ];
  for (const [batch, code] of cases) {
    const { server } = pair();
    assert.throws(() => server.receiveData(batch, 0), (e) => e.code === code);
  }
});

test("an ack of something never sent is a protocol error", () => {
  const { client } = pair();
  assert.throws(() => client.receiveData(sessionFrames.ack(1), 0), (e) => e.code === 1002);
});

test("a text message that is not UTF-8 is 1007; one over maxMessageSize is 1009", () => {
  let { server } = pair();
  assert.throws(() => server.receiveData(sessionFrames.data(1, 3, Uint8Array.of(0xff)), 0), (e) => e.code === 1007);
  ({ server } = pair({ maxMessageSize: 4 }));
  assert.throws(() => server.receiveData(sessionFrames.data(1, 1, new Uint8Array(5)), 0), (e) => e.code === 1009);
});

test("fragments of one message must agree on TEXT; DATA after CLOSE is an error", () => {
  let { server } = pair();
  const mixed = new Uint8Array([...sessionFrames.data(1, 2, Uint8Array.of(0x61)), ...sessionFrames.data(2, 1, Uint8Array.of(0x62))]);
  assert.throws(() => server.receiveData(mixed, 0), (e) => e.code === 1002);
  ({ server } = pair());
  const afterClose = new Uint8Array([...sessionFrames.close(1, 1000, ""), ...sessionFrames.data(2, 1, new Uint8Array(0))]);
  assert.throws(() => server.receiveData(afterClose, 0), /DATA after CLOSE/);
});

test("heartbeat: an idle transport sends PING after heartbeatInterval, the peer answers PONG", () => {
  const { client, server } = pair({ heartbeatInterval: 20, stallTimeout: 15 });
  settle(client, server, 0);
  assert.equal(client.nextDeadline(), 20);
  client.handleTimer(20);
  const frames = sessionFrames.decode(client.dataToSend(20));
  assert.deepEqual(frames.map((f) => f.type), [4]);
  server.receiveData(sessionFrames.ping(frames[0].nonce), 20);
  const pong = sessionFrames.decode(server.dataToSend(20));
  assert.deepEqual(pong.map((f) => f.type), [5]);
  client.receiveData(sessionFrames.pong(frames[0].nonce), 21);
  client.handleTimer(40);
  assert.deepEqual(ofType(client.eventsReceived(), "stalled"), [], "the pong was progress");
});

test("stall watchdog: data outstanding and no ack for stallTimeout reports stalled once", () => {
  const { client, server } = pair({ stallTimeout: 15, retransmitTimeout: 100, heartbeatInterval: 100 });
  settle(client, server, 0);
  client.sendMessage("x");
  hop(client, server, 1, { drop: true });
  client.handleTimer(15);
  assert.deepEqual(ofType(client.eventsReceived(), "stalled"), []);
  client.handleTimer(16);
  assert.equal(ofType(client.eventsReceived(), "stalled").length, 1);
  client.handleTimer(40);
  assert.equal(ofType(client.eventsReceived(), "stalled").length, 0, "once per transport");
  client.transportAttached(41); // the I/O layer demoted it: a new transport replays
  settle(client, server, 41);
  assert.deepEqual(received(server), ["x"]);
});

test("expiry: no transport for resumeGrace closes with 4000 and an ABORT for a returning peer", () => {
  const { client } = pair({ resumeGrace: 60 });
  client.transportLost(10);
  assert.equal(client.nextDeadline(), 70);
  client.handleTimer(69);
  assert.equal(client.state, SessionState.OPEN);
  client.handleTimer(70);
  assert.equal(ofType(client.eventsReceived(), "closed")[0].code, 4000);
  client.transportAttached(80);
  const [abort] = sessionFrames.decode(client.dataToSend(80));
  assert.deepEqual([abort.type, abort.code], [7, 4000]);
});

test("probe: HELLO+PING answered by HELLO+PONG; a bad probe leaves the session untouched", () => {
  const { client, server } = pair();
  const { nonce, batch } = client.probeRequest(1);
  const reply = server.probeReply(batch, 1);
  const answered = client.probeCheck(reply, 1.5);
  assert.equal(answered.nonce, nonce);
  assert.equal(answered.rtt, 0.5);
  assert.equal(client.probeCheck(reply, 2), null, "a probe is answered once");

  const impostor = new Session({ sessionId: "sess-1", token: new Uint8Array(32), isClient: true, now: 0 });
  assert.throws(() => server.probeReply(impostor.probeRequest(0).batch, 1), (e) => e.code === 4001);
  assert.throws(() => server.probeReply(sessionFrames.ping(1), 1), RemoteProtocolError);
  assert.equal(server.state, SessionState.OPEN);
  client.sendMessage("still fine");
  settle(client, server, 2);
  assert.deepEqual(received(server), ["still fine"]);
});

test("rewind: a long-poll GET's last-received acks and resends the rest", () => {
  const { client, server } = pair();
  server.sendMessage("a");
  server.sendMessage("b");
  const lostResponse = server.dataToSend(0);
  assert.ok(lostResponse.length);
  server.rewind(1, 0); // the next GET says: nothing received yet
  settle(server, client, 1);
  assert.deepEqual(received(client), ["a", "b"]);
  assert.throws(() => server.rewind(2, 99), RemoteProtocolError);
});

test("maxBatchBytes bounds a batch; at least one frame always fits", () => {
  const { client } = pair({ maxBatchBytes: 100, fragmentSize: 500 });
  client.sendMessage(new Uint8Array(400));
  client.sendMessage(new Uint8Array(10));
  const first = client.dataToSend(0);
  assert.ok(first.length > 400 && first.length < 500);
  const second = client.dataToSend(0);
  assert.ok(second.length < 100);
});

test("fuzz: random batches never escape as anything but RemoteProtocolError", () => {
  let seed = 99;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 8) & 0xff;
  const seeds = [sessionFrames.data(1, 1, Uint8Array.of(1)), sessionFrames.ack(0), sessionFrames.ping(3), sessionFrames.close(1, 1000, "x")];
  for (let i = 0; i < 5000; i++) {
    const { server } = pair();
    const base = seeds[i % seeds.length];
    const batch = Uint8Array.from(base);
    batch[rand() % batch.length] = rand();
    try {
      server.receiveData(batch, 0);
      server.eventsReceived();
      server.dataToSend(0);
    } catch (err) {
      assert.ok(err instanceof RemoteProtocolError, String(err));
      assert.equal(server.state, SessionState.CLOSED);
    }
  }
});
