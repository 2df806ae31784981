// Turning the API's wire forms (base64 blobs, epoch milliseconds, user properties) into things
// a person can read, and back. Pure functions: no DOM, no network.

const utf8 = new TextEncoder();
// fatal: a payload that is not UTF-8 must be recognised as binary, not shown with U+FFFD.
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

export function utf8Encode(text) {
  return utf8.encode(text);
}

/** The text of `bytes`, or null when they are not valid UTF-8. */
export function utf8Decode(bytes) {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return null;
  }
}

export function base64ToBytes(b64) {
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

export function bytesToBase64(bytes) {
  // String.fromCharCode(...bytes) overflows the call stack on large arrays: go in chunks.
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** `0a 1b ff ...`, 16 bytes a line. */
export function hexDump(bytes) {
  const lines = [];
  for (let i = 0; i < bytes.length; i += 16) {
    const row = Array.from(bytes.subarray(i, i + 16), (b) => b.toString(16).padStart(2, '0'));
    lines.push(row.join(' '));
  }
  return lines.join('\n');
}

/**
 * How to show a payload: `{ kind: 'JSON' | 'text' | 'binary' | 'empty', text }`.
 * JSON is pretty-printed; text that is not JSON is shown as is; anything else as hex.
 */
export function describePayload(bytes) {
  if (bytes.length === 0) return { kind: 'empty', text: '' };
  const text = utf8Decode(bytes);
  if (text === null) return { kind: 'binary', text: hexDump(bytes) };
  try {
    return { kind: 'JSON', text: JSON.stringify(JSON.parse(text), null, 2) };
  } catch {
    return { kind: 'text', text };
  }
}

/** The payload for the live message list: text, or hex when binary, cut at `maxChars`. */
export function payloadPreview(bytes, maxChars = 2000) {
  if (bytes.length === 0) return { kind: 'empty', text: '(empty)' };
  const text = utf8Decode(bytes);
  if (text !== null) {
    return { kind: 'text', text: text.length > maxChars ? `${text.slice(0, maxChars)} …` : text };
  }
  const maxBytes = Math.floor(maxChars / 3); // "ff " is three characters a byte
  const hex = hexDump(bytes.subarray(0, maxBytes));
  return { kind: 'binary', text: bytes.length > maxBytes ? `${hex} …` : hex };
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

const localTime = new Intl.DateTimeFormat(undefined, {
  dateStyle: 'medium',
  timeStyle: 'medium',
});

/** Epoch milliseconds in the browser's time zone, e.g. "25 Nov 2026, 19:04:05". */
export function formatTime(epochMs) {
  return localTime.format(new Date(epochMs));
}

/** The API's user properties (base64 of `[{"k":"v"}, ...]`) as `[[key, value], ...]`. */
export function decodeUserProperties(b64) {
  if (!b64) return [];
  const list = JSON.parse(utf8Decode(base64ToBytes(b64)) ?? 'null');
  if (!Array.isArray(list)) throw new Error('userProperties is not a JSON array');
  // One key per object on the wire, but tolerate more: show every pair, in order.
  return list.flatMap((obj) => Object.entries(obj).map(([k, v]) => [k, String(v)]));
}

/** `[[key, value], ...]` as the `x-amz-mqtt5-user-properties` header value. */
export function encodeUserProperties(pairs) {
  const list = pairs.map(([k, v]) => ({ [k]: v }));
  return bytesToBase64(utf8Encode(JSON.stringify(list)));
}
