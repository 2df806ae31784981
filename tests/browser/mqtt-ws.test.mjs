// The console's MQTT client (console/mqtt-ws.js) byte by byte, against a fake WebSocket: how
// it frames packets, and how it copes with packets split across frames or sharing one. The
// browser test (console.test.mjs) covers it against the real broker.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MqttClient } from '../../console/mqtt-ws.js';

/** Stands in for the browser's WebSocket; the test opens it and feeds it bytes. */
class FakeSocket extends EventTarget {
  static last = null;

  constructor(url, protocol) {
    super();
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.last = this;
  }

  send(bytes) {
    this.sent.push(Array.from(bytes));
  }

  close() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.dispatchEvent(Object.assign(new Event('close'), { code: 1000, reason: '' }));
  }

  open() {
    this.readyState = 1;
    this.dispatchEvent(new Event('open'));
  }

  /** One WebSocket frame from the broker. */
  deliver(bytes) {
    const data = new Uint8Array(bytes).buffer;
    this.dispatchEvent(Object.assign(new Event('message'), { data }));
  }
}

const CONNACK_OK = [0x20, 0x02, 0x00, 0x00];

function publishPacket({ topic, payload, qos = 0, retain = false, dup = false, id = 1 }) {
  const t = new TextEncoder().encode(topic);
  const body = [t.length >> 8, t.length & 0xff, ...t, ...(qos > 0 ? [id >> 8, id & 0xff] : []), ...payload];
  const length = [];
  let n = body.length;
  do {
    length.push((n % 128) | (n >= 128 ? 0x80 : 0));
    n = Math.floor(n / 128);
  } while (n > 0);
  const flags = (dup ? 0x08 : 0) | (qos << 1) | (retain ? 1 : 0);
  return [0x30 | flags, ...length, ...body];
}

/** A client that has completed CONNECT/CONNACK, and the messages and closes it reports. */
async function connected(options = {}) {
  const client = new MqttClient('ws://broker/mqtt', { WebSocket: FakeSocket, ...options });
  const messages = [];
  const closes = [];
  client.addEventListener('message', (e) => messages.push(e.detail));
  client.addEventListener('close', (e) => closes.push(e.detail.error));
  const done = client.connect();
  const socket = FakeSocket.last;
  socket.open();
  socket.deliver(CONNACK_OK);
  await done;
  return { client, socket, messages, closes };
}

test('CONNECT asks for MQTT 3.1.1, a clean session, keep alive and a valid random client id', async () => {
  const { client, socket } = await connected({ keepAliveSeconds: 30 });
  assert.equal(socket.protocol, 'mqtt');
  const connect = socket.sent[0];
  const id = client.clientId;
  assert.match(id, /^[0-9a-zA-Z]{1,23}$/); // [MQTT-3.1.3-5]
  assert.deepEqual(connect, [
    0x10, 10 + 2 + id.length,
    0x00, 0x04, ...Buffer.from('MQTT'), 0x04, 0x02, 0x00, 30,
    0x00, id.length, ...Buffer.from(id),
  ]);
  client.disconnect();
  assert.deepEqual(socket.sent.at(-1), [0xe0, 0x00]);
});

test('a refused CONNACK fails the connect with the reason', async () => {
  const client = new MqttClient('ws://broker/mqtt', { WebSocket: FakeSocket });
  const done = client.connect();
  FakeSocket.last.open();
  FakeSocket.last.deliver([0x20, 0x02, 0x00, 0x05]);
  await assert.rejects(done, (err) => {
    assert.equal(err.message, 'connection refused (CONNACK 0x05): not authorized');
    assert.equal(err.refusedCredentials, true);
    return true;
  });
});

test('CONNECT carries the user name and password after the client id', async () => {
  const { client, socket } = await connected({ keepAliveSeconds: 30, username: 'ops', password: 'pä' });
  const id = client.clientId;
  const password = Buffer.from('pä'); // 3 bytes of UTF-8
  assert.deepEqual(socket.sent[0], [
    0x10, 10 + 2 + id.length + 2 + 3 + 2 + password.length,
    // user name and password flags, clean session [MQTT-3.1.2-19] [MQTT-3.1.2-21]
    0x00, 0x04, ...Buffer.from('MQTT'), 0x04, 0xc2, 0x00, 30,
    0x00, id.length, ...Buffer.from(id),
    0x00, 3, ...Buffer.from('ops'),
    0x00, password.length, ...password,
  ]);
});

test('a CONNACK refusing the credentials says so', async () => {
  const client = new MqttClient('ws://broker/mqtt', { WebSocket: FakeSocket, username: 'u', password: 'wrong' });
  const done = client.connect();
  FakeSocket.last.open();
  FakeSocket.last.deliver([0x20, 0x02, 0x00, 0x04]);
  await assert.rejects(done, /^MqttError: connection refused \(CONNACK 0x04\): bad user name or password$/);
});

test('SUBSCRIBE and UNSUBSCRIBE carry packet ids and resolve on their acks', async () => {
  const { client, socket } = await connected();
  const sub = client.subscribe('a/+', 1);
  const [header, length, idHi, idLo, ...rest] = socket.sent.at(-1);
  assert.equal(header, 0x82); // [MQTT-3.8.1-1]
  assert.equal(length, 2 + 2 + 3 + 1);
  assert.deepEqual(rest, [0x00, 0x03, ...Buffer.from('a/+'), 1]);
  socket.deliver([0x90, 0x03, idHi, idLo, 0x01]);
  assert.equal(await sub, 1);

  const refused = client.subscribe('#', 2);
  const [, , rHi, rLo] = socket.sent.at(-1);
  socket.deliver([0x90, 0x03, rHi, rLo, 0x80]);
  await assert.rejects(refused, /refused/);

  const unsub = client.unsubscribe('a/+');
  const [uHeader, , uHi, uLo] = socket.sent.at(-1);
  assert.equal(uHeader, 0xa2); // [MQTT-3.10.1-1]
  socket.deliver([0xb0, 0x02, uHi, uLo]);
  await unsub;
  client.disconnect();
});

test('a packet split across frames, even inside its length, arrives once and whole', async () => {
  const { client, socket, messages } = await connected();
  const payload = Array.from({ length: 300 }, (_, i) => i % 256); // a two-byte remaining length
  const bytes = publishPacket({ topic: 't/1', payload, qos: 1, retain: true, id: 0x1234 });
  for (const b of bytes) socket.deliver([b]);
  assert.equal(messages.length, 1);
  assert.equal(messages[0].topic, 't/1');
  assert.equal(messages[0].retain, true);
  assert.equal(messages[0].qos, 1);
  assert.deepEqual(Array.from(messages[0].payload), payload);
  assert.deepEqual(socket.sent.at(-1), [0x40, 0x02, 0x12, 0x34]); // PUBACK
  client.disconnect();
});

test('several packets in one frame are all handled, with a partial one kept for later', async () => {
  const { client, socket, messages } = await connected();
  const a = publishPacket({ topic: 'a', payload: [1] });
  const b = publishPacket({ topic: 'b', payload: [2], retain: true });
  const c = publishPacket({ topic: 'c', payload: [3, 3, 3] });
  socket.deliver([...a, ...b, ...c.slice(0, 4)]);
  assert.deepEqual(messages.map((m) => [m.topic, m.retain]), [['a', false], ['b', true]]);
  socket.deliver([...c.slice(4), 0xd0, 0x00]); // the rest of c, and a PINGRESP
  assert.deepEqual(messages.map((m) => m.topic), ['a', 'b', 'c']);
  client.disconnect();
});

test('QoS 2 is delivered once: PUBREC, resends ignored until PUBREL, then PUBCOMP', async () => {
  const { client, socket, messages } = await connected();
  const first = publishPacket({ topic: 'q2', payload: [9], qos: 2, id: 7 });
  socket.deliver(first);
  assert.deepEqual(socket.sent.at(-1), [0x50, 0x02, 0x00, 0x07]); // PUBREC
  socket.deliver(publishPacket({ topic: 'q2', payload: [9], qos: 2, id: 7, dup: true }));
  assert.equal(messages.length, 1, 'a resend before PUBREL is not a new message');
  assert.deepEqual(socket.sent.at(-1), [0x50, 0x02, 0x00, 0x07]);
  socket.deliver([0x62, 0x02, 0x00, 0x07]); // PUBREL
  assert.deepEqual(socket.sent.at(-1), [0x70, 0x02, 0x00, 0x07]); // PUBCOMP
  socket.deliver(first); // id 7 is free again: a new message
  assert.equal(messages.length, 2);
  client.disconnect();
});

test('malformed input closes the connection with a reason', async () => {
  for (const [bytes, reason] of [
    [[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], /remaining length/],
    [[0x36, 0x03, 0x00, 0x01, 0x61], /QoS 3/],
    [[0x30, 0x04, 0x00, 0x02, 0xc3, 0x28], /UTF-8/],
  ]) {
    const { socket, closes } = await connected();
    socket.deliver(bytes);
    assert.equal(closes.length, 1);
    assert.match(closes[0].message, reason);
    assert.equal(socket.readyState, 3);
  }
});

test('PINGREQ goes out at half the keep alive; a broker that stops answering is dropped', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval', 'setTimeout'] });
  const { socket, closes } = await connected({ keepAliveSeconds: 10 });
  t.mock.timers.tick(5_000);
  assert.deepEqual(socket.sent.at(-1), [0xc0, 0x00]);
  socket.deliver([0xd0, 0x00]);
  t.mock.timers.tick(5_000);
  assert.deepEqual(socket.sent.at(-1), [0xc0, 0x00]);
  assert.equal(closes.length, 0);
  t.mock.timers.tick(5_000); // the second PINGREQ was never answered
  assert.equal(closes.length, 1);
  assert.match(closes[0].message, /PINGRESP/);
});
