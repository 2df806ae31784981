// The overview: the service's health at a glance, read from `GET /metrics` (the same page
// Prometheus scrapes, behind the same `retaind:Metrics` action), polled while the view is
// shown. Rates and latencies are computed here from consecutive readings, and the last few
// minutes of them are kept (bounded) for the chart, drawn as SVG by hand. A principal whose
// policy does not allow `retaind:Metrics` sees the refusal and no numbers: the page shows
// nothing that /metrics would not.

import * as api from './api.js';
import { has, histogram, histogramDelta, parseMetrics, rate, total } from './prom.js';

/** How often the page is read while the overview is shown. */
export const POLL_MS = 2000;
/** Rates kept for the chart: five minutes at POLL_MS. */
export const MAX_POINTS = 150;
/** The store latency is taken over this much of the history. */
const LATENCY_WINDOW_MS = 60_000;

const SVG = 'http://www.w3.org/2000/svg';
/** Margins of the plot inside the chart, in CSS pixels. */
const CHART = { left: 48, right: 8, top: 10, bottom: 22 };

/** One reading of the page: what the overview needs of it. */
function reading(samples, at) {
  return {
    at,
    retained: has(samples, 'retaind_retained_messages') ? total(samples, 'retaind_retained_messages') : null,
    // Summed by the server at most a minute before (a scan of the table): it lags the count.
    bytes: has(samples, 'retaind_retained_bytes') ? total(samples, 'retaind_retained_bytes') : null,
    connections: total(samples, 'retaind_mqtt_connections'),
    // In: PUBLISH packets from MQTT clients and publishes accepted over HTTP; out: PUBLISH
    // packets to MQTT clients.
    in: total(samples, 'retaind_mqtt_messages_received_total')
      + total(samples, 'retaind_http_requests_total', (l) => l.operation === 'Publish' && /^2/.test(l.status)),
    out: total(samples, 'retaind_mqtt_messages_sent_total'),
    commits: histogram(samples, 'retaind_store_write_batch_duration_seconds'),
  };
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function formatRate(perSecond) {
  if (perSecond === null || perSecond === undefined) return '–';
  return perSecond >= 100 ? perSecond.toFixed(0) : perSecond.toFixed(1);
}

function formatBytes(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function formatSeconds(seconds) {
  if (seconds === Infinity) return 'over 16 s';
  const ms = seconds * 1000;
  return ms >= 10 ? `${ms.toFixed(0)} ms` : `${ms.toFixed(2)} ms`;
}

/**
 * The overview view. `ui` gives the console's element builder and error display, so that
 * this view shows errors exactly as the others do.
 */
export function createOverview({ $, el, showError, clearError }) {
  /** Readings, oldest first, at most MAX_POINTS + 1. */
  const readings = [];
  /** `{ at, in, out }` per second between consecutive readings, oldest first. */
  const points = [];
  let timer = null;
  /** A newer poll (or stop) supersedes an older one still in flight. */
  let generation = 0;

  async function poll() {
    const mine = ++generation;
    let text;
    try {
      text = await api.metricsText();
    } catch (err) {
      if (mine !== generation) return;
      if (err.refusedCredentials) {
        // Asking again will not help until the principal's policy changes or another
        // principal signs in: stop, and show nothing but the refusal.
        stop();
        $('overview-body').hidden = true;
        showError($('overview-error'), err, 'The overview reads GET /metrics, which needs the retaind:Metrics action: ');
        return;
      }
      $('overview-status').textContent = 'The numbers below are from the last successful reading.';
      showError($('overview-error'), err);
      return;
    }
    if (mine !== generation) return;
    clearError($('overview-error'));
    add(reading(parseMetrics(text), Date.now()));
    render();
  }

  function add(next) {
    const last = readings.at(-1);
    if (last) {
      const seconds = (next.at - last.at) / 1000;
      const inRate = rate(last.in, next.in, seconds);
      const outRate = rate(last.out, next.out, seconds);
      if (inRate === null || outRate === null) {
        // The server restarted: its counters started again from zero.
        readings.length = 0;
        points.length = 0;
      } else {
        points.push({ at: next.at, in: inRate, out: outRate });
        if (points.length > MAX_POINTS) points.shift();
      }
    }
    readings.push(next);
    if (readings.length > MAX_POINTS + 1) readings.shift();
  }

  function render() {
    const now = readings.at(-1);
    $('overview-body').hidden = false;
    $('overview-status').textContent = `Read at ${new Date(now.at).toLocaleTimeString()}, every ${POLL_MS / 1000} s.`;
    $('ov-retained').textContent = now.retained === null ? 'not available' : String(now.retained);
    $('ov-bytes').textContent = now.bytes === null ? 'not available' : formatBytes(now.bytes);
    $('ov-connections').textContent = String(now.connections);
    const latest = points.at(-1);
    $('ov-in').textContent = formatRate(latest?.in);
    $('ov-out').textContent = formatRate(latest?.out);
    renderLatency(now);
    renderChart();
  }

  function renderLatency(now) {
    const since = readings.find((r) => now.at - r.at <= LATENCY_WINDOW_MS) ?? now;
    const delta = histogramDelta(since.commits, now.commits);
    const seconds = Math.round((now.at - since.at) / 1000);
    let text;
    if (!now.commits) {
      text = 'not available';
    } else if (delta && delta.count > 0) {
      text = `mean ${formatSeconds(delta.mean)}, 99% within ${formatSeconds(delta.p99)} (${delta.count} commits in the last ${seconds} s)`;
    } else if (now.commits.count > 0) {
      text = `no commits in the last ${seconds} s; since start: mean ${formatSeconds(now.commits.sum / now.commits.count)} over ${now.commits.count} commits`;
    } else {
      text = 'no commits yet';
    }
    $('ov-latency').textContent = text;
  }

  function renderChart() {
    const chart = $('ov-chart');
    // Drawn at the size it is shown, so that its text is not stretched.
    const box = chart.getBoundingClientRect();
    const width = Math.max(200, Math.round(box.width));
    const height = Math.max(100, Math.round(box.height));
    chart.setAttribute('viewBox', `0 0 ${width} ${height}`);
    const { left, right, top, bottom } = CHART;
    const plotW = width - left - right;
    const plotH = height - top - bottom;
    const peak = Math.max(1, ...points.flatMap((p) => [p.in, p.out]));
    // A round top for the scale: 1, 2 or 5 times a power of ten.
    const step = 10 ** Math.floor(Math.log10(peak));
    const scaleTop = [1, 2, 5, 10].map((m) => m * step).find((v) => v >= peak);
    const span = MAX_POINTS * POLL_MS;
    const end = points.at(-1)?.at ?? Date.now();
    const x = (at) => left + plotW * (1 - (end - at) / span);
    const y = (v) => top + plotH * (1 - v / scaleTop);
    const line = (key) => points.map((p) => `${x(p.at).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ');
    chart.replaceChildren(
      svg('line', { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: 'axis' }),
      svg('line', { x1: left, y1: top, x2: left, y2: top + plotH, class: 'axis' }),
      text(left - 4, top + 4, String(scaleTop), 'end'),
      text(left - 4, top + plotH, '0', 'end'),
      text(left, height - 4, `${span / 60_000} min ago`, 'start'),
      text(left + plotW, height - 4, 'now', 'end'),
      svg('polyline', { points: line('in'), class: 'series-in', 'data-series': 'in' }),
      svg('polyline', { points: line('out'), class: 'series-out', 'data-series': 'out' }),
    );
    const latest = points.at(-1);
    chart.setAttribute('aria-label', latest
      ? `Messages per second over the last ${Math.round((end - points[0].at) / 1000)} s; now ${formatRate(latest.in)} in, ${formatRate(latest.out)} out`
      : 'Messages per second: a second reading is needed for the first point');
  }

  function text(xAt, yAt, content, anchor) {
    const node = svg('text', { x: xAt, y: yAt, 'text-anchor': anchor });
    node.textContent = content;
    return node;
  }

  function start() {
    if (timer !== null) return;
    poll();
    timer = setInterval(poll, POLL_MS);
  }

  function stop() {
    generation += 1;
    if (timer !== null) clearInterval(timer);
    timer = null;
  }

  return { start, stop };
}
