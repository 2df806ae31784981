// A small MQTT 3.1.1 client over WebSocket, enough for the console's test client: connect with a
// clean session, subscribe, unsubscribe, receive PUBLISH at QoS 0, 1 and 2, keep alive.
// It does not publish (the console publishes over HTTP) and keeps no state across connections.
//
// Spec references are to MQTT 3.1.1 (OASIS, 2014), e.g. [MQTT-3.1.2-22].

const PACKET = {
  CONNECT: 1, CONNACK: 2, PUBLISH: 3, PUBACK: 4, PUBREC: 5, PUBREL: 6, PUBCOMP: 7,
  SUBSCRIBE: 8, SUBACK: 9, UNSUBSCRIBE: 10, UNSUBACK: 11, PINGREQ: 12, PINGRESP: 13,
  DISCONNECT: 14,
};

const CONNACK_REFUSALS = {
  1: 'unacceptable protocol version',
  2: 'client identifier rejected',
  3: 'server unavailable',
  4: 'bad user name or password',
  5: 'not authorized',
};

/** The browser keeps at most this much of one incoming packet; a larger one closes the link. */
const MAX_PACKET_BYTES = 16 * 1024 * 1024;
/** How long CONNACK, SUBACK and UNSUBACK may take before the request fails. */
const REPLY_TIMEOUT_MS = 10_000;

/** WebSocket readyState values, fixed by the WebSocket standard. */
const CONNECTING = 0;
const OPEN = 1;

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** The MQTT error a caller sees: a refused CONNECT, a failed subscription, a lost link. */
export class MqttError extends Error {
  /** @param {number|null} connackCode the CONNACK return code when the CONNECT was refused */
  constructor(message, connackCode = null) {
    super(message);
    this.name = 'MqttError';
    this.connackCode = connackCode;
  }

  /** CONNACK 0x04 (bad user name or password) or 0x05 (not authorized). */
  get refusedCredentials() {
    return this.connackCode === 4 || this.connackCode === 5;
  }
}

// ---- Encoding -----------------------------------------------------------------------------

/** Remaining Length: 7 bits a byte, high bit set while more follow [MQTT-2.2.3]. */
function encodeLength(n) {
  const out = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return out;
}

/** A UTF-8 string with its two-byte length prefix [MQTT-1.5.3]. */
function encodeString(s) {
  const bytes = encoder.encode(s);
  if (bytes.length > 0xffff) throw new MqttError('string longer than 65535 bytes');
  return [bytes.length >> 8, bytes.length & 0xff, ...bytes];
}

function packet(type, flags, body) {
  return new Uint8Array([(type << 4) | flags, ...encodeLength(body.length), ...body]);
}

const u16 = (n) => [n >> 8, n & 0xff];

// ---- Decoding -----------------------------------------------------------------------------

/**
 * Splits whole packets off the front of `buf`. Returns `{ packets, rest }`, where `rest` is an
 * incomplete packet to keep until more bytes arrive: a WebSocket frame may hold several
 * packets, or part of one [MQTT-6.0.0-2].
 */
function splitPackets(buf) {
  const packets = [];
  let at = 0;
  while (buf.length - at >= 2) {
    const header = readRemainingLength(buf, at + 1);
    if (header === null) break; // its length bytes have not all arrived
    const { length, bodyAt } = header;
    if (length > MAX_PACKET_BYTES) throw new MqttError(`packet of ${length} bytes is too large`);
    if (buf.length - bodyAt < length) break;
    packets.push({
      type: buf[at] >> 4,
      flags: buf[at] & 0x0f,
      body: buf.subarray(bodyAt, bodyAt + length),
    });
    at = bodyAt + length;
  }
  return { packets, rest: buf.subarray(at) };
}

/** Remaining Length at `at`: `{ length, bodyAt }`, or null when it is not all here yet. */
function readRemainingLength(buf, at) {
  let length = 0;
  for (let n = 0; n < 4; n++) {
    if (at + n >= buf.length) return null;
    const byte = buf[at + n];
    length += (byte & 0x7f) * 128 ** n;
    if ((byte & 0x80) === 0) return { length, bodyAt: at + n + 1 };
  }
  throw new MqttError('malformed remaining length'); // at most four bytes [MQTT-2.2.3]
}

function readU16(body, at) {
  if (body.length < at + 2) throw new MqttError('packet too short');
  return (body[at] << 8) | body[at + 1];
}

function readString(body, at) {
  const length = readU16(body, at);
  if (body.length < at + 2 + length) throw new MqttError('string runs past the packet');
  try {
    return { value: decoder.decode(body.subarray(at + 2, at + 2 + length)), next: at + 2 + length };
  } catch {
    throw new MqttError('topic is not valid UTF-8'); // [MQTT-1.5.3-1]
  }
}

// ---- The client ---------------------------------------------------------------------------

/** A random client id: 3.1.1 servers must accept 1-23 characters of [0-9a-zA-Z] [MQTT-3.1.3-5]. */
function randomClientId() {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  return `console${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** The WebSocket URL of the broker serving this page: same host, `/mqtt`. */
export function brokerUrl(location = window.location) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/mqtt`;
}

/**
 * Events: `message` (detail `{ topic, payload: Uint8Array, qos, retain, dup }`) and `close`
 * (detail `{ error }`: an MqttError, or null after `disconnect()`).
 */
export class MqttClient extends EventTarget {
  /**
   * @param {string} url `ws://host/mqtt`
   * @param {object} options `keepAliveSeconds`; `username` and `password` for CONNECT (none
   *   when `username` is absent); `WebSocket`, the class to connect with (tests pass a fake one
   *   to feed the client bytes split and joined in chosen ways)
   */
  constructor(url, {
    keepAliveSeconds = 30, username = null, password = null, WebSocket = globalThis.WebSocket,
  } = {}) {
    super();
    this.url = url;
    this.username = username;
    this.password = password;
    this.WebSocket = WebSocket;
    this.keepAliveSeconds = keepAliveSeconds;
    this.clientId = randomClientId();
    this.socket = null;
    this.buffer = new Uint8Array(0);
    this.nextPacketId = 1;
    /** packet id → { resolve, reject, timer } for SUBACK/UNSUBACK. */
    this.pending = new Map();
    /** QoS 2 packet ids delivered and awaiting PUBREL, so a resent PUBLISH is not shown twice. */
    this.awaitingRelease = new Set();
    this.pingTimer = null;
    this.pingOutstanding = false;
    this.closed = false;
  }

  /** Opens the WebSocket and completes the MQTT handshake; resolves once CONNACK accepts. */
  connect() {
    return new Promise((resolve, reject) => {
      const socket = new this.WebSocket(this.url, 'mqtt');
      socket.binaryType = 'arraybuffer';
      this.socket = socket;
      const timer = setTimeout(() => this.shutdown(new MqttError('no CONNACK in time')), REPLY_TIMEOUT_MS);
      this.pending.set('connack', { resolve, reject, timer });

      socket.addEventListener('open', () => {
        if (socket.protocol !== 'mqtt') {
          this.shutdown(new MqttError(`server chose sub-protocol "${socket.protocol}", not "mqtt"`));
          return;
        }
        this.send(this.connectPacket());
      });
      socket.addEventListener('message', (event) => this.receive(new Uint8Array(event.data)));
      // The browser hides why a WebSocket failed; `close` follows `error` with a code.
      socket.addEventListener('close', (event) => {
        const why = event.reason ? `: ${event.reason}` : '';
        this.shutdown(new MqttError(`connection closed (code ${event.code}${why})`));
      });
    });
  }

  /** CONNECT: clean session, no will, the user name and password if given. */
  connectPacket() {
    const hasUser = this.username !== null && this.username !== undefined;
    // A password needs a user name [MQTT-3.1.2-22].
    const hasPassword = hasUser && this.password !== null && this.password !== undefined;
    const flags = 0x02 | (hasUser ? 0x80 : 0) | (hasPassword ? 0x40 : 0);
    const body = [
      ...encodeString('MQTT'),
      4, // protocol level 4 is 3.1.1 [MQTT-3.1.2-2]
      flags,
      ...u16(this.keepAliveSeconds),
      // Client id, then user name, then password, in that order [MQTT-3.1.3-1].
      ...encodeString(this.clientId),
      ...(hasUser ? encodeString(this.username) : []),
      ...(hasPassword ? encodeString(this.password) : []), // binary data: UTF-8 of the text
    ];
    return packet(PACKET.CONNECT, 0, body);
  }

  /** Subscribes to one filter; resolves with the granted QoS. */
  subscribe(filter, qos) {
    const id = this.packetId();
    const body = [...u16(id), ...encodeString(filter), qos];
    return this.request(id, packet(PACKET.SUBSCRIBE, 0x02, body)); // flags 0010 [MQTT-3.8.1-1]
  }

  unsubscribe(filter) {
    const id = this.packetId();
    const body = [...u16(id), ...encodeString(filter)];
    return this.request(id, packet(PACKET.UNSUBSCRIBE, 0x02, body)); // [MQTT-3.10.1-1]
  }

  /** Sends DISCONNECT and closes; no `close` error follows. */
  disconnect() {
    if (this.closed) return;
    if (this.socket?.readyState === OPEN) {
      this.send(packet(PACKET.DISCONNECT, 0, []));
    }
    this.shutdown(null);
  }

  // ---- internals ----

  packetId() {
    // Ids 1..65535 [MQTT-2.3.1-1], skipping any still waiting for an answer.
    do {
      this.nextPacketId = (this.nextPacketId % 0xffff) + 1;
    } while (this.pending.has(this.nextPacketId));
    return this.nextPacketId;
  }

  request(id, bytes) {
    if (this.closed || this.socket?.readyState !== OPEN) {
      return Promise.reject(new MqttError('not connected'));
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new MqttError('no answer from the broker in time'));
      }, REPLY_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      this.send(bytes);
    });
  }

  settle(key, value, error) {
    const waiting = this.pending.get(key);
    if (!waiting) return;
    clearTimeout(waiting.timer);
    this.pending.delete(key);
    if (error) waiting.reject(error);
    else waiting.resolve(value);
  }

  send(bytes) {
    this.socket.send(bytes);
  }

  receive(chunk) {
    if (this.closed) return;
    // Keep any incomplete packet from the previous frame in front of this one.
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer);
    joined.set(chunk, this.buffer.length);
    try {
      const { packets, rest } = splitPackets(joined);
      this.buffer = rest.slice();
      for (const p of packets) this.handle(p);
    } catch (err) {
      this.shutdown(err instanceof MqttError ? err : new MqttError(String(err)));
    }
  }

  handle({ type, flags, body }) {
    switch (type) {
      case PACKET.CONNACK: {
        if (body.length !== 2) throw new MqttError('malformed CONNACK');
        const code = body[1];
        if (code !== 0) {
          const hex = `0x${code.toString(16).padStart(2, '0')}`;
          const why = CONNACK_REFUSALS[code] ?? 'unknown return code';
          throw new MqttError(`connection refused (CONNACK ${hex}): ${why}`, code);
        }
        this.startKeepAlive();
        this.settle('connack', undefined);
        break;
      }
      case PACKET.PUBLISH:
        this.handlePublish(flags, body);
        break;
      case PACKET.PUBREL: {
        // QoS 2, second half: the message was delivered on PUBLISH; now forget its id.
        const id = readU16(body, 0);
        this.awaitingRelease.delete(id);
        this.send(packet(PACKET.PUBCOMP, 0, u16(id)));
        break;
      }
      case PACKET.SUBACK: {
        if (body.length < 3) throw new MqttError('malformed SUBACK');
        const id = readU16(body, 0);
        const granted = body[2];
        // 0x80 is the server's refusal of that filter [MQTT-3.9.3].
        const error = granted === 0x80 ? new MqttError('subscription refused by the broker') : null;
        this.settle(id, granted, error);
        break;
      }
      case PACKET.UNSUBACK:
        this.settle(readU16(body, 0), undefined);
        break;
      case PACKET.PINGRESP:
        this.pingOutstanding = false;
        break;
      default:
        throw new MqttError(`unexpected packet type ${type} from the broker`);
    }
  }

  handlePublish(flags, body) {
    const qos = (flags >> 1) & 0x03;
    if (qos === 3) throw new MqttError('PUBLISH with QoS 3'); // [MQTT-3.3.1-4]
    const { value: topic, next } = readString(body, 0);
    const id = qos > 0 ? readU16(body, next) : null;
    const payload = body.slice(qos > 0 ? next + 2 : next);
    const message = { topic, payload, qos, retain: (flags & 0x01) === 1, dup: (flags & 0x08) !== 0 };

    if (qos === 2) {
      // Deliver on the first PUBLISH, answer PUBREC, and ignore resends of the same id until
      // PUBREL frees it: exactly once for the page [MQTT-4.3.3].
      if (!this.awaitingRelease.has(id)) {
        this.awaitingRelease.add(id);
        this.emit('message', message);
      }
      this.send(packet(PACKET.PUBREC, 0, u16(id)));
      return;
    }
    this.emit('message', message);
    if (qos === 1) this.send(packet(PACKET.PUBACK, 0, u16(id)));
  }

  /**
   * Sends PINGREQ at half the keep alive, so the broker hears from us well within it
   * [MQTT-3.1.2-23]; a PINGREQ still unanswered at the next tick means the link is dead.
   */
  startKeepAlive() {
    if (this.keepAliveSeconds === 0) return;
    this.pingTimer = setInterval(() => {
      if (this.pingOutstanding) {
        this.shutdown(new MqttError('the broker stopped answering (no PINGRESP)'));
        return;
      }
      this.pingOutstanding = true;
      this.send(packet(PACKET.PINGREQ, 0, []));
    }, (this.keepAliveSeconds * 1000) / 2);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Ends the connection once: rejects whatever waits, stops the timer, tells listeners. */
  shutdown(error) {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.pingTimer);
    const reason = error ?? new MqttError('disconnected');
    for (const key of [...this.pending.keys()]) this.settle(key, undefined, reason);
    if (this.socket && [CONNECTING, OPEN].includes(this.socket.readyState)) this.socket.close();
    this.emit('close', { error });
  }
}
