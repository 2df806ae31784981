// The console's reading of the watch's event stream (console/watch.js), without a browser:
// events split anywhere across chunks, every line ending SSE allows, comments, multi-line data.
//
//   node --test tests/browser/sse.test.mjs

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EventParser } from '../../console/watch.js';

const STREAM = ': keep-alive\n\n'
  + 'event: put\nid: 8192\ndata: {"topic":"a/b","revision":8192}\n\n'
  + 'event: synced\r\ndata: {"revision":8192}\r\n\r\n'
  + 'event: delete\rid: 12288\rdata: {"topic":"a/b",\rdata: "revision":12288}\r\r'
  + 'retry: 5000\n: a comment between events\n\n';

function parse(chunks) {
  const events = [];
  const parser = new EventParser((event) => events.push(event));
  for (const chunk of chunks) parser.push(chunk);
  return events;
}

const EXPECTED = [
  { event: 'put', id: '8192', data: '{"topic":"a/b","revision":8192}' },
  { event: 'synced', id: null, data: '{"revision":8192}' },
  { event: 'delete', id: '12288', data: '{"topic":"a/b",\n"revision":12288}' },
];

test('a stream read in one piece gives each event once', () => {
  assert.deepEqual(parse([STREAM]), EXPECTED);
});

test('a stream split at every position gives the same events', () => {
  for (let cut = 1; cut < STREAM.length; cut += 1) {
    assert.deepEqual(parse([STREAM.slice(0, cut), STREAM.slice(cut)]), EXPECTED, `cut at ${cut}`);
  }
});

test('a stream fed one character at a time gives the same events', () => {
  assert.deepEqual(parse([...STREAM]), EXPECTED);
});

test('an event without its blank line is not given yet', () => {
  assert.deepEqual(parse(['event: put\ndata: {}\n']), []);
});
