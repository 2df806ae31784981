// The Prometheus text format (0.0.4) as `GET /metrics` writes it, read back into numbers, and
// what the overview derives from two readings: rates of counters and a latency histogram's
// mean and quantile over the time between them. Pure functions, no DOM, so Node tests them
// (tests/browser/prom.test.mjs).

/**
 * Parses the page into samples `{ name, labels, value }`. Comment lines (`# HELP`, `# TYPE`)
 * and lines that do not parse are skipped: the page is retaind's own, so a line it cannot
 * read is a newer metric, not an attack, and the rest still counts.
 */
export function parseMetrics(text) {
  const samples = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const sample = parseLine(line);
    if (sample) samples.push(sample);
  }
  return samples;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*/;
const LABEL = /\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?/y;

function parseLine(line) {
  const name = NAME.exec(line)?.[0];
  if (!name) return null;
  let rest = line.slice(name.length);
  const labels = {};
  if (rest.startsWith('{')) {
    const end = rest.indexOf('}');
    if (end < 0) return null;
    const body = rest.slice(1, end);
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < body.length) {
      const at = LABEL.lastIndex;
      const match = LABEL.exec(body);
      if (!match || LABEL.lastIndex === at) return null;
      labels[match[1]] = match[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    rest = rest.slice(end + 1);
  }
  // The value, then an optional timestamp, which retaind does not write.
  const value = parseValue(rest.trim().split(/\s+/)[0]);
  return Number.isNaN(value) ? null : { name, labels, value };
}

function parseValue(text) {
  if (text === '+Inf') return Infinity;
  if (text === '-Inf') return -Infinity;
  if (text === undefined || text === '') return NaN;
  return Number(text);
}

/** The sum of every sample called `name` whose labels pass `where` (all of them by default). */
export function total(samples, name, where = () => true) {
  return samples
    .filter((s) => s.name === name && where(s.labels))
    .reduce((sum, s) => sum + s.value, 0);
}

/** Whether `name` appears on the page at all (a gauge at 0 does; a missing one does not). */
export function has(samples, name) {
  return samples.some((s) => s.name === name);
}

/**
 * The histogram `name` (no labels of its own): cumulative `buckets` `[{ le, count }]` in
 * ascending `le`, `sum` and `count`; null when the page has none.
 */
export function histogram(samples, name) {
  const buckets = samples
    .filter((s) => s.name === `${name}_bucket`)
    .map((s) => ({ le: parseValue(s.labels.le), count: s.value }))
    .filter((b) => !Number.isNaN(b.le))
    .sort((a, b) => a.le - b.le);
  if (buckets.length === 0) return null;
  return {
    buckets,
    sum: total(samples, `${name}_sum`),
    count: total(samples, `${name}_count`),
  };
}

/**
 * Per second, from `before` to `after` of a counter read `seconds` apart; null when it cannot
 * be said (no time passed, or the counter went down: the server restarted).
 */
export function rate(before, after, seconds) {
  if (!(seconds > 0) || after < before) return null;
  return (after - before) / seconds;
}

/**
 * What the histogram recorded between two readings: `count` observations, their `mean`
 * (seconds), and `p99`, the upper bound of the bucket that holds the 99th percentile (the
 * histogram cannot say more exactly; Infinity when it is beyond the last bound). Null when
 * the histograms are missing or the server restarted in between.
 */
export function histogramDelta(before, after) {
  if (!before || !after || after.count < before.count) return null;
  const count = after.count - before.count;
  if (count === 0) return { count, mean: null, p99: null };
  const earlier = new Map(before.buckets.map((b) => [b.le, b.count]));
  const target = 0.99 * count;
  const within = after.buckets.find((b) => b.count - (earlier.get(b.le) ?? 0) >= target);
  return {
    count,
    mean: (after.sum - before.sum) / count,
    p99: within ? within.le : Infinity,
  };
}
