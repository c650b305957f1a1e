// The idle-timeout learning rule (src/idle.js), the same cases as
// tests/core/test_idle.py, and the heartbeat it sets on a running session.
import { test } from "node:test";
import assert from "node:assert/strict";
import { IdleLearner, learnerFor } from "../src/idle.js";
import { Session } from "../src/session.js";

test("two deaths after about ten seconds teach a five-second heartbeat", () => {
  const learner = new IdleLearner(20);
  assert.equal(learner.websocketDied(10.02), null); // once is not a pattern
  assert.equal(learner.heartbeat, 20);
  assert.deepEqual(learner.websocketDied(10.01), { limit: 10.01, heartbeat: 5 });
  assert.equal(learner.heartbeat, 5);
  assert.equal(learner.learned, 10.01);
});

test("deaths at different idle times, and short silences, teach nothing", () => {
  const learner = new IdleLearner(20);
  for (const idle of [4, 12, 6, 18, 3, 0.2, 0.3, 1.9, 1.8, 0, NaN]) assert.equal(learner.websocketDied(idle), null);
  assert.equal(learner.heartbeat, 20);
  assert.equal(learner.learned, null);
});

test("the floor holds, a lesson is kept, only a shorter limit lowers it", () => {
  const learner = new IdleLearner(20);
  learner.websocketDied(15);
  assert.deepEqual(learner.websocketDied(14.5), { limit: 14.5, heartbeat: 7.3 });
  learner.websocketDied(2.5);
  assert.deepEqual(learner.websocketDied(2.6), { limit: 2.5, heartbeat: 2 });
  learner.websocketDied(2.3);
  assert.equal(learner.websocketDied(2.2), null); // nothing below the floor
  assert.equal(learner.heartbeat, 2);
  assert.throws(() => new IdleLearner(0), RangeError);
});

test("about the same is 20 % or 1.5 s", () => {
  const same = (a, b) => {
    const learner = new IdleLearner(1000);
    learner.websocketDied(a);
    return learner.websocketDied(b) !== null;
  };
  assert.ok(same(5, 6.5) && same(30, 37.5));
  assert.ok(!same(5, 6.6) && !same(30, 37.6));
});

test("the heartbeat never rises and never goes below the floor (random deaths)", () => {
  let seed = 7;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let run = 0; run < 200; run++) {
    const learner = new IdleLearner(0.5 + random() * 120);
    let previous = learner.heartbeat;
    for (let i = 0; i < 30; i++) {
      const idle = random() < 0.5 ? random() * 40 : 10 + random();
      const lesson = learner.websocketDied(idle);
      assert.ok(learner.heartbeat <= previous);
      if (lesson !== null) assert.ok(lesson.heartbeat >= 2 && lesson.heartbeat < lesson.limit && lesson.limit <= idle);
      previous = learner.heartbeat;
    }
  }
});

test("one learner per gateway and start value, shared by the page's sockets", () => {
  const a = learnerFor("https://gw.example/", 20);
  assert.equal(learnerFor("https://gw.example/", 20), a);
  assert.notEqual(learnerFor("https://other.example/", 20), a);
  assert.notEqual(learnerFor("https://gw.example/", 8), a);
});

test("a running session takes a new heartbeat at once", () => {
  const token = Uint8Array.from({ length: 32 }, (_, i) => i + 1);
  const s = new Session({ sessionId: "sess-1", token, isClient: true, now: 0, config: { heartbeatInterval: 20 } });
  s.transportAttached(0);
  s.dataToSend(0);
  assert.equal(s.nextDeadline(), 20);
  s.setHeartbeat(5);
  assert.equal(s.config.heartbeatInterval, 5);
  assert.equal(s.nextDeadline(), 5);
  assert.throws(() => s.setHeartbeat(0), RangeError);
});
