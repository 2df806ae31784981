// Follows `GET /retainedMessage-watch` (Server-Sent Events) for the console. EventSource cannot
// send the signed-in token, so this reads the stream with fetch and parses the events itself.
// A dropped stream is opened again after a pause, from the last revision seen
// (`Last-Event-ID`), so no change is missed; a `resync` starts over from the present.

import { authHeaders } from './session.js';

/** Pauses between attempts to reopen a dropped watch, in ms: doubled up to the cap. */
const RETRY_FIRST_MS = 1_000;
const RETRY_MAX_MS = 30_000;

/**
 * Splits an SSE byte stream into events. Feeds text in with `push`; calls `onEvent({ event,
 * data, id })` for each complete event. Comments (keep-alives) and unknown fields are skipped.
 */
export class EventParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.reset();
  }

  reset() {
    this.event = '';
    this.data = [];
    this.id = null;
  }

  push(text) {
    this.buffer += text;
    let end;
    while ((end = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, end);
      const eol = this.buffer.startsWith('\r\n', end) ? 2 : 1;
      // A lone '\r' at the end may be the first half of '\r\n': wait for more.
      if (eol === 1 && this.buffer[end] === '\r' && end === this.buffer.length - 1) return;
      this.buffer = this.buffer.slice(end + eol);
      this.line(line);
    }
  }

  line(line) {
    if (line === '') {
      if (this.data.length > 0 || this.event !== '') {
        this.onEvent({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
      }
      this.reset();
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id') this.id = value;
  }
}

/**
 * Watches `topicFilter` from `fromRevision` on (or, with none, from now: `snapshot=false`).
 * `onChange(kind, data, revision)` gets each `put`, `delete`, `expire` and `purge`;
 * `onState(state, detail)` hears `live`, `retrying` (with the error) and `resync` (the watch
 * could not continue from where it was: whatever the caller shows may be stale, reload it).
 * Returns a function that stops the watch.
 */
export function watchRetained({ topicFilter, fromRevision = null, onChange, onState }) {
  const abort = new AbortController();
  let revision = fromRevision;
  let retry = RETRY_FIRST_MS;
  let stopped = false;
  let resynced = false;

  const open = async () => {
    const query = new URLSearchParams({ topicFilter });
    if (revision === null) query.set('snapshot', 'false');
    else query.set('fromRevision', String(revision));
    const response = await fetch(`/retainedMessage-watch?${query}`, {
      headers: { ...authHeaders(), Accept: 'text/event-stream' },
      cache: 'no-store',
      signal: abort.signal,
    });
    if (!response.ok) {
      const type = (response.headers.get('x-amzn-ErrorType') ?? '').split(':')[0];
      let message = response.statusText;
      try {
        message = (await response.json()).message ?? message;
      } catch {
        // not JSON: keep the status text
      }
      const err = new Error(`${type || 'Error'} (HTTP ${response.status}): ${message}`);
      err.status = response.status;
      throw err;
    }
    const parser = new EventParser(({ event, data, id }) => {
      let body = {};
      try {
        body = JSON.parse(data || '{}');
      } catch {
        return; // not ours to show
      }
      if (event === 'resync') {
        // The stream ends after this; the next one starts from the present.
        revision = null;
        resynced = true;
        onState('resync', body.message ?? '');
        return;
      }
      if (id !== null && /^\d+$/.test(id)) revision = Number(id);
      if (event === 'synced') {
        if (revision === null && Number.isSafeInteger(body.revision)) revision = body.revision;
        retry = RETRY_FIRST_MS;
        onState('live');
      } else if (['put', 'delete', 'expire', 'purge'].includes(event)) {
        onChange(event, body, revision);
      }
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser.push(value);
    }
  };

  (async () => {
    while (!stopped) {
      try {
        await open();
        if (stopped) return;
        // After a resync the next watch starts from the present (the caller reloads what it
        // shows); otherwise the service ended it (a restart, a policy reload).
        if (!resynced) onState('retrying', 'the service ended the watch');
        resynced = false;
      } catch (err) {
        if (stopped) return;
        // Refused credentials will not get better by waiting; the caller shows the error.
        if (err.status === 401 || err.status === 403) {
          onState('refused', err.message);
          return;
        }
        onState('retrying', err.message);
      }
      await new Promise((resolve) => setTimeout(resolve, retry));
      retry = Math.min(retry * 2, RETRY_MAX_MS);
    }
  })();

  return () => {
    stopped = true;
    abort.abort();
  };
}
