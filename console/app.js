// The retaind console: retained messages (list, detail, edit, delete), a publish form, an
// MQTT test client and an overview of the service's health (overview.js). Plain DOM; views are
// sections of index.html shown by the URL fragment (#/retained, #/retained/<topic>,
// #/publish, #/client, #/overview), so links, the back button and
// bookmarks work. Data is only ever put in the page with textContent, never as HTML.
// With principals configured, a sign-in view comes first (see session.js).

import * as api from './api.js';
import {
  decodeUserProperties, describePayload, formatBytes, formatTime, payloadPreview, utf8Decode,
} from './format.js';
import { MqttClient, brokerUrl } from './mqtt-ws.js';
import { createOverview } from './overview.js';
import * as session from './session.js';
import { watchRetained } from './watch.js';

/** The live message list keeps this many; older ones drop off the end. */
const MAX_LIVE_MESSAGES = 500;
/** A burst of changes to the retained set reloads the list once, this long after the first. */
const LIVE_RELOAD_DELAY_MS = 300;

const $ = (id) => document.getElementById(id);

/** Builds an element: `el('a', { href: '#' }, 'text', child)`. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'class') node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

/**
 * Shows what failed in an alert region: the AWS error name, status and message, after
 * `context` ("Could not connect: "). Refused credentials (HTTP 401/403, CONNACK 0x04/0x05)
 * come with a button to sign in again.
 */
function showError(region, err, context = '') {
  const summary = err instanceof api.ApiError ? err.summary : String(err.message ?? err);
  region.replaceChildren(el('strong', {}, `${context}${summary}`));
  if (err.requestId) region.append(el('small', {}, `Request id ${err.requestId}`));
  if (err.refusedCredentials) {
    const again = el('button', { type: 'button', class: 'secondary sign-in-again' }, 'Sign in again');
    again.addEventListener('click', () => signIn.prompt());
    region.append(again);
  }
  region.hidden = false;
}

function clearError(region) {
  region.hidden = true;
  region.replaceChildren();
}

function topicHref(topic) {
  return `#/retained/${encodeURIComponent(topic)}`;
}

function timeElement(epochMs) {
  return el('time', { datetime: new Date(epochMs).toISOString() }, formatTime(epochMs));
}

// ---- Routing -------------------------------------------------------------------------------

const views = {
  signin: $('view-signin'),
  retained: $('view-retained'),
  detail: $('view-detail'),
  publish: $('view-publish'),
  client: $('view-client'),
  overview: $('view-overview'),
};

function route() {
  // Fragments like #main (the skip link) are in-page targets, not views.
  if (location.hash && !location.hash.startsWith('#/')) return;
  const hash = location.hash || '#/retained';
  const [, section, ...rest] = hash.split('/');
  const encodedTopic = rest.join('/');
  let name = ['retained', 'publish', 'client', 'overview'].includes(section) ? section : 'retained';
  let topic = null;
  if (name === 'retained' && encodedTopic !== '') {
    name = 'detail';
    try {
      topic = decodeURIComponent(encodedTopic);
    } catch {
      topic = encodedTopic; // not valid percent-encoding: take it as typed
    }
  }
  // The view asked for waits behind the sign-in view, and shows once signed in.
  const signingIn = signIn.needed();
  if (signingIn) name = 'signin';
  $('site-nav').hidden = signingIn;
  $('sign-out').hidden = signingIn || !session.isAuthRequired();
  for (const [key, view] of Object.entries(views)) view.hidden = key !== name;
  for (const link of document.querySelectorAll('[data-nav]')) {
    const current = link.dataset.nav === (name === 'detail' ? 'retained' : name);
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  if (name === 'retained') list.load();
  if (name === 'detail') detail.load(topic);
  // Watches run only while their view is shown.
  if (name === 'retained') list.follow();
  else list.unfollow();
  if (name !== 'detail') detail.unfollow();
  // Polled only while shown.
  if (name === 'overview') overview.start();
  else overview.stop();

  // Move focus to the new view's heading, so keyboard and screen-reader users start there
  // rather than on the link they left behind.
  const heading = views[name].querySelector('h1');
  heading.tabIndex = -1;
  heading.focus({ preventScroll: true });
  document.title = `${heading.textContent} – retaind console`;
}

// ---- Sign-in ---------------------------------------------------------------------------------

const signIn = {
  /** Set by "Sign in again": show the form even though credentials are stored. */
  asked: false,

  needed() {
    return this.asked || (session.isAuthRequired() && !session.credentials());
  },

  prompt() {
    this.asked = true;
    const stored = session.credentials();
    // The user name may be kept; the secrets are typed again.
    $('signin-mqtt-username').value = stored?.mqttUsername ?? '';
    $('signin-token').value = '';
    $('signin-mqtt-password').value = '';
    route();
  },
};

$('signin-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const errors = $('signin-error');
  clearError(errors);
  const token = $('signin-token').value.trim();
  const mqttUsername = $('signin-mqtt-username').value;
  const mqttPassword = $('signin-mqtt-password').value;
  if (token === '' && mqttUsername === '') {
    showError(errors, new Error('Enter an API token (for retained messages and publishing), an MQTT user name and password (for the test client), or both.'));
    $('signin-token').focus();
    return;
  }
  if (mqttPassword !== '' && mqttUsername === '') {
    showError(errors, new Error('Enter the MQTT user name that goes with the password.'));
    $('signin-mqtt-username').focus();
    return;
  }
  session.signIn({ token, mqttUsername, mqttPassword });
  $('signin-form').reset();
  signIn.asked = false;
  // A connection made with the old credentials would go on under them.
  client.disconnect();
  route();
});

$('sign-out').addEventListener('click', () => {
  client.disconnect();
  session.signOut();
  // Reloading drops everything the page holds from the signed-in session (lists, payloads,
  // live messages) at once; the reloaded page starts at the sign-in view.
  location.reload();
});

// ---- Retained messages: the list ----------------------------------------------------------

const list = {
  filter: '',
  /** The nextToken that led to each page seen so far; page 1 has none. */
  tokens: [undefined],
  page: 0,
  nextToken: undefined,
  /** Said in front of the next status line, e.g. what was just deleted. */
  notice: '',
  /** A newer load supersedes an older one still in flight. */
  generation: 0,

  async load() {
    const generation = ++this.generation;
    const status = $('retained-status');
    status.textContent = 'Loading…';
    try {
      const result = await api.listRetained({
        maxResults: Number($('page-size').value),
        nextToken: this.tokens[this.page],
        filter: this.filter,
      });
      if (generation !== this.generation) return;
      clearError($('retained-error'));
      this.nextToken = result.nextToken;
      this.render(result.retainedTopics ?? []);
    } catch (err) {
      if (generation !== this.generation) return;
      // Rows from before the failure would pass for its answer: clear them.
      this.nextToken = undefined;
      this.render([]);
      status.textContent = '';
      showError($('retained-error'), err);
    }
  },

  render(items) {
    $('retained-rows').replaceChildren(
      ...items.map((item) =>
        el('tr', {},
          el('td', { 'data-label': 'Topic' }, el('a', { href: topicHref(item.topic) }, item.topic)),
          el('td', { class: 'num', 'data-label': 'Size' }, formatBytes(item.payloadSize)),
          el('td', { class: 'num', 'data-label': 'QoS' }, String(item.qos)),
          el('td', { 'data-label': 'Last modified' }, timeElement(item.lastModifiedTime)),
        ),
      ),
    );
    const scope = this.filter ? ` matching “${this.filter}”` : '';
    let text;
    if (items.length > 0) {
      text = `Page ${this.page + 1}: ${items.length} retained message${items.length === 1 ? '' : 's'}${scope}.`;
    } else if (this.nextToken) {
      // A filtered page reads a bounded stretch of topics, so it can be empty with more to come.
      text = `No retained messages${scope} on this page, but more topics follow: use Next page.`;
    } else {
      text = `No retained messages${scope}${this.page > 0 ? ' on this page' : ''}.`;
    }
    $('retained-status').textContent = text;
    if (this.notice) {
      $('retained-status').textContent = `${this.notice} ${$('retained-status').textContent}`;
      this.notice = '';
    }
    $('retained-table').hidden = items.length === 0;
    $('page-label').textContent = `Page ${this.page + 1}`;
    $('first-page').disabled = this.page === 0;
    $('prev-page').disabled = this.page === 0;
    $('next-page').disabled = !this.nextToken;
  },

  restart() {
    this.tokens = [undefined];
    this.page = 0;
    this.load();
    if (this.stopWatch) {
      this.unfollow();
      this.follow();
    }
  },

  /** Stops the list's watch, if one runs. */
  stopWatch: null,
  reloadTimer: null,

  /**
   * Keeps the shown page current: a watch on what the filter covers reloads the page (once
   * per burst) whenever a retained message in scope changes, on any node, by anyone.
   */
  follow() {
    if (this.stopWatch) return;
    const { topicFilter, covers } = watchScope(this.filter);
    this.setLive('connecting', 'Live updates: connecting…');
    this.stopWatch = watchRetained({
      topicFilter,
      onChange: (_kind, change) => {
        if (covers(change.topic ?? '')) this.reloadSoon();
      },
      onState: (state, detail) => {
        if (state === 'live') this.setLive('live', 'Live: the list follows changes as they happen');
        else if (state === 'resync') {
          this.setLive('connecting', 'Live updates: catching up…');
          this.reloadSoon();
        } else if (state === 'refused') this.setLive('off', `Live updates off: ${detail}`);
        else this.setLive('retrying', `Live updates interrupted (${detail}); retrying`);
      },
    });
  },

  unfollow() {
    this.stopWatch?.();
    this.stopWatch = null;
    clearTimeout(this.reloadTimer);
    this.reloadTimer = null;
    this.setLive('off', 'Live updates off');
  },

  setLive(state, text) {
    $('retained-live').dataset.state = state;
    $('retained-live').textContent = text;
  },

  reloadSoon() {
    if (this.reloadTimer) return;
    this.reloadTimer = setTimeout(() => {
      this.reloadTimer = null;
      this.load();
    }, LIVE_RELOAD_DELAY_MS);
  },
};

/**
 * What the list's filter box covers, as a watch filter plus a test on each topic: a topic
 * filter as it is; a prefix as the filter of its whole levels (`devices/th` → `devices/#`),
 * narrowed to the prefix in the page.
 */
function watchScope(filter) {
  if (/[+#]/.test(filter)) return { topicFilter: filter, covers: () => true };
  const levels = filter.slice(0, filter.lastIndexOf('/') + 1);
  return { topicFilter: `${levels}#`, covers: (topic) => topic.startsWith(filter) };
}

$('filter-form').addEventListener('submit', (event) => {
  event.preventDefault();
  // Not trimmed: spaces are legal in topics.
  list.filter = $('filter').value;
  list.restart();
});
$('page-size').addEventListener('change', () => list.restart());
$('refresh').addEventListener('click', () => list.load());
$('first-page').addEventListener('click', () => list.restart());
$('prev-page').addEventListener('click', () => {
  list.page = Math.max(0, list.page - 1);
  list.load();
});
$('next-page').addEventListener('click', () => {
  if (!list.nextToken) return;
  list.page += 1;
  list.tokens[list.page] = list.nextToken;
  list.load();
});

// ---- Retained messages: one message -------------------------------------------------------

const detail = {
  /** The message on show, as GetRetainedMessage returned it (payload as bytes). */
  message: null,
  generation: 0,

  /** Stops the watch on the shown topic, if one runs. */
  stopWatch: null,

  async load(topic) {
    const generation = ++this.generation;
    this.unfollow();
    this.message = null;
    $('detail-title').textContent = 'Retained message';
    $('detail-body').hidden = true;
    $('detail-changed').hidden = true;
    clearError($('detail-error'));
    try {
      const message = await api.getRetained(topic);
      if (generation !== this.generation) return;
      this.message = message;
      this.render(message);
      this.follow(message);
    } catch (err) {
      if (generation !== this.generation) return;
      showError($('detail-error'), err);
    }
  },

  render(msg) {
    $('detail-topic').textContent = msg.topic;
    $('detail-qos').textContent = String(msg.qos);
    $('detail-modified').dateTime = new Date(msg.lastModifiedTime).toISOString();
    $('detail-modified').textContent = formatTime(msg.lastModifiedTime);
    $('detail-size').textContent = formatBytes(msg.payload.length);
    $('detail-revision').textContent = msg.revision === undefined ? 'unknown' : String(msg.revision);
    $('detail-writer').textContent = describeWriter(msg.writer);
    const shown = describePayload(msg.payload);
    $('detail-format').textContent = shown.kind === 'binary' ? 'binary, shown as hex' : shown.kind;
    $('detail-payload').textContent = shown.text;

    let props = [];
    try {
      props = decodeUserProperties(msg.userProperties);
    } catch (err) {
      showError($('detail-error'), new Error(`The user properties could not be read: ${err.message}`));
    }
    $('detail-no-props').hidden = props.length > 0;
    $('detail-props').hidden = props.length === 0;
    $('detail-props').tBodies[0].replaceChildren(
      ...props.map(([k, v]) => el('tr', {}, el('td', { 'data-label': 'Key' }, k), el('td', { 'data-label': 'Value' }, v))),
    );
    $('detail-body').hidden = false;
  },

  /**
   * Says when the shown message changes after it was read (a watch on its topic from its
   * revision on), so that no one edits or deletes from a stale view without knowing.
   */
  follow(msg) {
    if (msg.revision === undefined) return;
    this.stopWatch = watchRetained({
      topicFilter: msg.topic,
      fromRevision: msg.revision,
      onChange: (kind, change, revision) => {
        if (change.topic !== msg.topic || this.message !== msg) return;
        const what = {
          put: 'was republished', delete: 'was deleted', expire: 'expired', purge: 'was purged as unused',
        }[kind];
        const by = change.writer ? ` by ${describeWriter(change.writer)}` : '';
        $('detail-changed-text').textContent =
          `This retained message ${what}${by} after you opened it (now revision ${revision}).`;
        $('detail-changed').hidden = false;
      },
      onState: (state) => {
        // Could not follow from the shown revision: say the view may be stale.
        if (state === 'resync' && this.message === msg) {
          $('detail-changed-text').textContent = 'This view could not follow changes to the message; it may be out of date.';
          $('detail-changed').hidden = false;
        }
      },
    });
  },

  unfollow() {
    this.stopWatch?.();
    this.stopWatch = null;
  },
};

/** "sensor-7 (principal ops)", "HTTP", or "unknown" for messages from before revisions. */
function describeWriter(writer) {
  if (!writer) return 'unknown';
  const client = writer.clientId === 'HTTP' ? 'the HTTP API' : `MQTT client ${writer.clientId}`;
  return writer.principal ? `${client} (principal ${writer.principal})` : client;
}

$('detail-reload').addEventListener('click', () => {
  if (detail.message) detail.load(detail.message.topic);
});

$('edit-republish').addEventListener('click', () => {
  const msg = detail.message;
  if (!msg) return;
  let props = [];
  try {
    props = decodeUserProperties(msg.userProperties);
  } catch {
    // already reported in the detail view; republish without them
  }
  publishForm.fill({
    topic: msg.topic, qos: msg.qos, retain: true, payload: msg.payload, props, revision: msg.revision,
  });
  location.hash = '#/publish';
});

const confirmDialog = $('confirm-delete');

$('delete-message').addEventListener('click', () => {
  if (!detail.message) return;
  $('confirm-topic').textContent = detail.message.topic;
  $('confirm-revision').textContent = String(detail.message.revision ?? 'unknown');
  confirmDialog.returnValue = '';
  confirmDialog.showModal(); // focus goes to Cancel (autofocus); Escape cancels
});

confirmDialog.addEventListener('close', async () => {
  // Back to where the user was, whatever they chose.
  $('delete-message').focus();
  if (confirmDialog.returnValue !== 'delete' || !detail.message) return;
  const { topic, qos, revision } = detail.message;
  try {
    // Only the message the user saw: a newer one is not theirs to delete unseen.
    await api.deleteRetained(topic, qos, revision ?? null);
    list.notice = `Deleted the retained message on ${topic}.`;
    location.hash = '#/retained';
  } catch (err) {
    showError($('detail-error'), err);
    if (err instanceof api.ApiError && err.status === 412) {
      $('detail-error').append(el('p', {},
        'It changed after you opened it, so nothing was deleted. Use “Show the latest” to see it.'));
      $('detail-changed').hidden = false;
      if ($('detail-changed-text').textContent === '') {
        $('detail-changed-text').textContent = 'This retained message changed after you opened it.';
      }
    }
  }
});

// ---- Publish -------------------------------------------------------------------------------

const publishForm = {
  /** The revision the form was filled from, and its topic; null when typed afresh. */
  revision: null,
  revisionTopic: null,

  /** The If-Match revision to send: only for the topic it was read from, when asked for. */
  condition(topic, retain) {
    if (this.revision === null || topic !== this.revisionTopic || !retain) return null;
    return $('pub-if-unchanged').checked ? this.revision : null;
  },

  addProperty(key = '', value = '') {
    const n = $('pub-props').children.length + 1;
    const keyId = `prop-key-${n}-${Date.now()}`;
    const valueId = `prop-value-${n}-${Date.now()}`;
    const remove = el('button', { type: 'button', class: 'secondary' }, 'Remove');
    const row = el('li', {},
      el('div', { class: 'field' }, el('label', { for: keyId }, 'Key'),
        el('input', { id: keyId, class: 'prop-key', autocomplete: 'off', spellcheck: 'false' })),
      el('div', { class: 'field' }, el('label', { for: valueId }, 'Value'),
        el('input', { id: valueId, class: 'prop-value', autocomplete: 'off', spellcheck: 'false' })),
      remove,
    );
    row.querySelector('.prop-key').value = key;
    row.querySelector('.prop-value').value = value;
    remove.setAttribute('aria-label', `Remove user property ${n}`);
    remove.addEventListener('click', () => {
      row.remove();
      $('add-prop').focus();
    });
    $('pub-props').append(row);
    return row;
  },

  properties() {
    return Array.from($('pub-props').children, (row) => [
      row.querySelector('.prop-key').value,
      row.querySelector('.prop-value').value,
    ]).filter(([k, v]) => k !== '' || v !== '');
  },

  /**
   * Prefills the form, e.g. from "Edit and republish". `payload` is bytes; `revision`, the
   * message's revision, offers to republish only if it is still the topic's message.
   */
  fill({ topic, qos, retain, payload, props, revision }) {
    this.revision = revision ?? null;
    this.revisionTopic = topic;
    $('pub-if-unchanged-field').hidden = this.revision === null;
    $('pub-if-unchanged').checked = true;
    $('pub-if-revision').textContent = String(this.revision ?? '');
    $('pub-topic').value = topic;
    $('pub-qos').value = String(qos);
    $('pub-retain').checked = retain;
    // GetRetainedMessage does not return a content type: start without one.
    $('pub-content-type').value = '';
    const text = utf8Decode(payload);
    // A textarea holds text only: a binary payload cannot be edited here, so say so.
    $('pub-payload').value = text ?? '';
    $('pub-binary-note').hidden = text !== null;
    $('pub-props').replaceChildren();
    for (const [k, v] of props) this.addProperty(k, v);
    clearError($('publish-error'));
    $('publish-status').replaceChildren();
  },
};

$('add-prop').addEventListener('click', () => publishForm.addProperty().querySelector('input').focus());

$('publish-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const status = $('publish-status');
  const errors = $('publish-error');
  clearError(errors);
  status.replaceChildren();
  const topic = $('pub-topic').value;
  if (topic === '') {
    showError(errors, new Error('Enter a topic to publish to.'));
    $('pub-topic').focus();
    return;
  }
  const request = {
    topic,
    qos: Number($('pub-qos').value),
    retain: $('pub-retain').checked,
    payload: $('pub-payload').value,
    contentType: $('pub-content-type').value.trim(),
    userProperties: publishForm.properties(),
  };
  request.ifRevision = publishForm.condition(topic, request.retain);
  const button = $('publish-form').querySelector('button[type=submit]');
  button.disabled = true;
  status.textContent = 'Publishing…';
  try {
    await api.publish(request);
    $('pub-binary-note').hidden = true;
    // The condition was for one publish; a second would be refused by the first.
    publishForm.revision = null;
    $('pub-if-unchanged-field').hidden = true;
    const what = request.retain
      ? request.payload === ''
        ? 'An empty retained message deletes the retained message on'
        : 'Published and retained on'
      : 'Published (not retained) to';
    status.replaceChildren(`${what} `, el('code', {}, topic), ` at QoS ${request.qos}.`);
    if (request.retain && request.payload !== '') {
      status.append(' ', el('a', { href: topicHref(topic) }, 'View the retained message'));
    }
  } catch (err) {
    status.textContent = '';
    showError(errors, err);
    if (err instanceof api.ApiError && err.status === 412) {
      errors.append(el('p', {},
        'Someone changed this retained message after you opened it; nothing was published. ',
        el('a', { href: topicHref(topic) }, 'See the current message')));
    }
  } finally {
    button.disabled = false;
  }
});

// ---- Test client ---------------------------------------------------------------------------

const client = {
  /** The live connection, or null. */
  mqtt: null,
  connecting: null,
  /** filter → QoS asked for; kept across reconnects and subscribed again on connect. */
  filters: new Map(),

  setState(text) {
    $('conn-state').textContent = text;
    $('conn-state').dataset.state = text;
    $('conn-toggle').textContent = text === 'connected' ? 'Disconnect' : 'Connect';
    $('conn-toggle').disabled = text === 'connecting';
  },

  /** Connects if needed; resolves once connected and subscribed to every listed filter. */
  async connect() {
    if (this.mqtt) return;
    if (this.connecting) return this.connecting;
    this.setState('connecting');
    const mqtt = new MqttClient(brokerUrl(), session.mqttCredentials());
    mqtt.addEventListener('message', (event) => this.show(event.detail));
    mqtt.addEventListener('close', (event) => {
      if (this.mqtt === mqtt) this.mqtt = null;
      this.setState('disconnected');
      this.renderFilters();
      if (event.detail.error) showError($('client-error'), event.detail.error, 'MQTT connection lost: ');
    });
    this.connecting = (async () => {
      try {
        await mqtt.connect();
        this.mqtt = mqtt;
        this.setState('connected');
        clearError($('client-error'));
        for (const [filter, qos] of this.filters) await mqtt.subscribe(filter, qos);
        this.renderFilters();
      } finally {
        this.connecting = null;
      }
    })();
    return this.connecting;
  },

  disconnect() {
    this.mqtt?.disconnect();
  },

  async subscribe(filter, qos) {
    await this.connect();
    await this.mqtt.subscribe(filter, qos);
    this.filters.set(filter, qos);
    this.renderFilters();
  },

  async unsubscribe(filter) {
    if (this.mqtt) await this.mqtt.unsubscribe(filter);
    this.filters.delete(filter);
    this.renderFilters();
  },

  renderFilters() {
    const active = this.mqtt !== null;
    $('no-subs').hidden = this.filters.size > 0;
    $('subs').replaceChildren(
      ...Array.from(this.filters, ([filter, qos]) => {
        const button = el('button', { type: 'button', class: 'secondary', 'aria-label': `Unsubscribe from ${filter}` }, 'Unsubscribe');
        button.addEventListener('click', () => {
          this.unsubscribe(filter).catch((err) => showError($('client-error'), err));
        });
        const state = active ? `QoS ${qos}` : `QoS ${qos}, paused until connected`;
        return el('li', {}, el('code', {}, filter), el('span', { class: 'muted' }, state), button);
      }),
    );
  },

  /** Adds a received message at the top of the list. */
  show({ topic, payload, qos, retain, dup }) {
    const preview = payloadPreview(payload);
    const badges = el('span', { class: 'badges' },
      retain
        ? el('span', { class: 'badge retain', title: 'RETAIN flag set: a stored retained message, sent on subscribe' }, 'RETAIN')
        : el('span', { class: 'badge live', title: 'RETAIN flag not set: published while subscribed' }, 'live'),
      el('span', { class: 'badge' }, `QoS ${qos}`),
    );
    if (dup) badges.append(el('span', { class: 'badge' }, 'DUP'));
    if (preview.kind === 'binary') badges.append(el('span', { class: 'badge' }, 'binary, hex'));
    const item = el('li', { class: retain ? 'message retained' : 'message' },
      el('div', { class: 'message-head' },
        el('code', { class: 'message-topic' }, topic),
        badges,
        timeElement(Date.now()),
      ),
      el('pre', { class: 'payload' }, preview.text),
    );
    $('messages').prepend(item);
    while ($('messages').children.length > MAX_LIVE_MESSAGES) $('messages').lastElementChild.remove();
    $('no-messages').hidden = true;
  },
};

$('conn-toggle').addEventListener('click', () => {
  if (client.mqtt) {
    client.disconnect();
    return;
  }
  client.connect().catch((err) => showError($('client-error'), err, 'Could not connect: '));
});

$('subscribe-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const filter = $('sub-filter').value;
  if (filter === '') {
    showError($('client-error'), new Error('Enter a topic filter, e.g. devices/#.'));
    return;
  }
  clearError($('client-error'));
  try {
    await client.subscribe(filter, Number($('sub-qos').value));
  } catch (err) {
    showError($('client-error'), err, `Could not subscribe to ${filter}: `);
  }
});

$('clear-messages').addEventListener('click', () => {
  $('messages').replaceChildren();
  $('no-messages').hidden = false;
});

// ---- Start ---------------------------------------------------------------------------------

const overview = createOverview({ $, el, showError, clearError });

window.addEventListener('hashchange', route);
client.setState('disconnected');
// A reload may bring back what was typed into the sign-in form: start it empty.
$('signin-form').reset();
session.discover().then(route);
