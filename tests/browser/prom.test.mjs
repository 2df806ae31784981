// The overview's reading of `GET /metrics` (console/prom.js), without a browser: the text
// format as prometheus-client writes it, and what is derived from two readings.
//
//   node --test tests/browser/prom.test.mjs

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  has, histogram, histogramDelta, parseMetrics, rate, total,
} from '../../console/prom.js';

const PAGE = `# HELP retaind_mqtt_messages_received PUBLISH packets received from MQTT clients, by QoS.
# TYPE retaind_mqtt_messages_received counter
retaind_mqtt_messages_received_total{qos="0"} 3
retaind_mqtt_messages_received_total{qos="1"} 4
retaind_mqtt_messages_received_total{qos="2"} 0
retaind_http_requests_total{operation="Publish",status="200"} 5
retaind_http_requests_total{operation="Publish",status="403"} 9
retaind_http_requests_total{operation="/metrics",status="200"} 1
retaind_retained_messages 0
retaind_build_info{version="0.1.0"} 1
weird_label{text="a \\"quoted\\", comma"} 2
not a sample line
retaind_store_write_batch_duration_seconds_sum 0.012
retaind_store_write_batch_duration_seconds_count 4
retaind_store_write_batch_duration_seconds_bucket{le="0.0005"} 0
retaind_store_write_batch_duration_seconds_bucket{le="0.001"} 1
retaind_store_write_batch_duration_seconds_bucket{le="0.002"} 3
retaind_store_write_batch_duration_seconds_bucket{le="+Inf"} 4
# EOF
`;

test('samples are read with their labels; comments and unreadable lines are skipped', () => {
  const samples = parseMetrics(PAGE);
  assert.equal(total(samples, 'retaind_mqtt_messages_received_total'), 7);
  assert.equal(
    total(samples, 'retaind_http_requests_total', (l) => l.operation === 'Publish' && l.status === '200'),
    5,
  );
  assert.equal(samples.find((s) => s.name === 'weird_label').labels.text, 'a "quoted", comma');
  assert.ok(!samples.some((s) => s.name === 'not'));
});

test('a gauge at zero is there; a metric the page lacks is not', () => {
  const samples = parseMetrics(PAGE);
  assert.ok(has(samples, 'retaind_retained_messages'));
  assert.equal(total(samples, 'retaind_retained_messages'), 0);
  assert.ok(!has(samples, 'retaind_retained_bytes'));
});

test('a histogram is read in bucket order, +Inf last', () => {
  const h = histogram(parseMetrics(PAGE), 'retaind_store_write_batch_duration_seconds');
  assert.deepEqual(h.buckets.map((b) => b.le), [0.0005, 0.001, 0.002, Infinity]);
  assert.equal(h.count, 4);
  assert.equal(h.sum, 0.012);
  assert.equal(histogram(parseMetrics(PAGE), 'missing'), null);
});

test('a rate is per second, and unknown across a restart', () => {
  assert.equal(rate(10, 30, 2), 10);
  assert.equal(rate(30, 10, 2), null);
  assert.equal(rate(10, 30, 0), null);
});

test('the latency between two readings covers only what happened between them', () => {
  const bucket = (counts) => ({
    buckets: [0.001, 0.01, Infinity].map((le, i) => ({ le, count: counts[i] })),
    sum: counts.sum,
    count: counts[2],
  });
  const before = bucket(Object.assign([5, 5, 5], { sum: 0.005 }));
  // 100 more commits: 98 under 1 ms, 2 between 1 and 10 ms.
  const after = bucket(Object.assign([103, 105, 105], { sum: 0.005 + 0.1 }));
  const d = histogramDelta(before, after);
  assert.equal(d.count, 100);
  assert.ok(Math.abs(d.mean - 0.001) < 1e-12, String(d.mean));
  assert.equal(d.p99, 0.01);
  assert.deepEqual(histogramDelta(after, after), { count: 0, mean: null, p99: null });
  assert.equal(histogramDelta(after, before), null);
  const slow = bucket(Object.assign([5, 5, 105], { sum: 100 }));
  assert.equal(histogramDelta(before, slow).p99, Infinity);
});
