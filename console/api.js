// The retaind HTTP API, as the console uses it. Every failure becomes an ApiError whose
// `message` a person can read: the AWS error name from `x-amzn-ErrorType`, the status and the
// body's `message`, or what went wrong on the network.

import { base64ToBytes, encodeUserProperties } from './format.js';
import { authHeaders } from './session.js';

export class ApiError extends Error {
  /**
   * @param {string} message what the service (or the network) said
   * @param {object} info `status` (0 for network failures), `errorType` (AWS error name),
   *   `requestId` (`x-amzn-RequestId`, to find the request in the service's log)
   */
  constructor(message, { status = 0, errorType = '', requestId = '' } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.errorType = errorType;
    this.requestId = requestId;
  }

  /** e.g. "InvalidRequestException (HTTP 400): topic must not contain wildcards". */
  get summary() {
    if (this.status === 0) return `Network error: ${this.message}`;
    const name = this.errorType || 'Error';
    return `${name} (HTTP ${this.status}): ${this.message}`;
  }

  /** 401 (no credentials) or 403 (unknown token, or a policy that does not allow it). */
  get refusedCredentials() {
    return this.status === 401 || this.status === 403;
  }
}

/** Topics travel as one path segment: '/' and everything else special is percent-encoded. */
function topicPath(topic) {
  return encodeURIComponent(topic);
}

async function request(method, path, { headers = {}, body, as = 'json' } = {}) {
  let response;
  try {
    response = await fetch(path, {
      method, headers: { ...headers, ...authHeaders() }, body, cache: 'no-store',
    });
  } catch (err) {
    // fetch rejects only when no HTTP answer came back at all.
    throw new ApiError(`could not reach retaind (${err.message})`);
  }
  if (response.ok) return as === 'text' ? response.text() : response.json();

  // Error bodies are `{"message": "..."}`; the AWS error name is in the header. Something in
  // between (a proxy) may answer with anything, so fall back to the raw text.
  const errorType = (response.headers.get('x-amzn-ErrorType') ?? '').split(':')[0];
  const text = await response.text().catch(() => '');
  let message = text.trim() || response.statusText || 'no details';
  try {
    const parsed = JSON.parse(text);
    if (typeof parsed?.message === 'string') message = parsed.message;
  } catch {
    // not JSON: keep the text
  }
  throw new ApiError(message, {
    status: response.status,
    errorType,
    requestId: response.headers.get('x-amzn-RequestId') ?? '',
  });
}

/**
 * ListRetainedMessages. `filter` is retaind's extension: text with `+` or `#` is an MQTT topic
 * filter (`topicFilter`), any other text a literal topic prefix (`topicPrefix`).
 */
export function listRetained({ maxResults, nextToken, filter }) {
  const query = new URLSearchParams({ maxResults: String(maxResults) });
  if (nextToken) query.set('nextToken', nextToken);
  if (filter) query.set(/[+#]/.test(filter) ? 'topicFilter' : 'topicPrefix', filter);
  return request('GET', `/retainedMessage?${query}`);
}

/** GetRetainedMessage, with the payload decoded to bytes. */
export async function getRetained(topic) {
  const msg = await request('GET', `/retainedMessage/${topicPath(topic)}`);
  return { ...msg, payload: base64ToBytes(msg.payload ?? '') };
}

/**
 * Publish. `payload` is a string or bytes; `userProperties` is `[[key, value], ...]`; with
 * `ifRevision`, a retained publish fails with PreconditionFailedException (HTTP 412) unless
 * the topic's retained message is still that revision.
 */
export function publish({
  topic, payload, qos, retain, contentType = '', userProperties = [], ifRevision = null,
}) {
  const query = new URLSearchParams({ qos: String(qos), retain: String(retain) });
  if (contentType) query.set('contentType', contentType);
  const headers = {};
  // Compare-and-set: stored only while the topic's retained message is still this revision.
  if (ifRevision !== null) headers['If-Match'] = `"${ifRevision}"`;
  if (userProperties.length > 0) {
    headers['x-amz-mqtt5-user-properties'] = encodeUserProperties(userProperties);
  }
  return request('POST', `/topics/${topicPath(topic)}?${query}`, { headers, body: payload });
}

/** There is no delete operation: a retained publish with an empty payload is one. */
export function deleteRetained(topic, qos, ifRevision = null) {
  return publish({ topic, payload: '', qos, retain: true, ifRevision });
}

/** `GET /metrics`, the Prometheus text page (the principal needs `retaind:Metrics`). */
export function metricsText() {
  return request('GET', '/metrics', { as: 'text' });
}
