// node:test reporter: one line per test, then a JSON summary written to
// $COMPAT_SUMMARY for compat-tests/run to aggregate.
import fs from 'node:fs';
import path from 'node:path';
import { inspect } from 'node:util';

function label(data) {
  const file = data.file ? path.basename(data.file).replace(/\.test\.mjs$/, '') : '?';
  return `js/${file}: ${data.name}`;
}

function errorText(err) {
  if (!err) return '';
  const cause = err.cause ?? err;
  let msg = cause && cause.message ? cause.message : inspect(cause, { depth: 4 });
  if (cause && cause.code === 'ERR_ASSERTION' && cause.actual !== undefined) {
    msg += `\n      actual:   ${inspect(cause.actual, { depth: 6, breakLength: Infinity })}`;
    msg += `\n      expected: ${inspect(cause.expected, { depth: 6, breakLength: Infinity })}`;
  }
  return msg
    .split('\n')
    .map((l) => `      ${l}`)
    .join('\n');
}

export default async function* reporter(source) {
  const counts = { passed: 0, failed: 0, skipped: 0 };
  const failures = [];
  for await (const event of source) {
    const { type, data } = event;
    if (type === 'test:pass' || type === 'test:fail') {
      if (data.details && data.details.type === 'suite') continue;
      const ms = data.details && data.details.duration_ms ? ` (${Math.round(data.details.duration_ms)} ms)` : '';
      if (type === 'test:pass' && (data.skip || data.todo)) {
        counts.skipped += 1;
        const reason = typeof data.skip === 'string' ? data.skip : 'skipped';
        yield `SKIP ${label(data)} -- ${reason}\n`;
      } else if (type === 'test:pass') {
        counts.passed += 1;
        yield `ok   ${label(data)}${ms}\n`;
      } else {
        counts.failed += 1;
        const text = `FAIL ${label(data)}${ms}\n${errorText(data.details && data.details.error)}\n`;
        failures.push(text);
        yield text;
      }
    } else if (type === 'test:diagnostic' && /^(tests|pass|fail|skipped|cancelled|todo|suites|duration_ms|duration|todo) /.test(data.message)) {
      // totals are printed by compat-tests/run
    } else if (type === 'test:stderr' || type === 'test:stdout') {
      if (process.env.COMPAT_VERBOSE === '1') yield data.message;
    }
  }
  if (failures.length) {
    yield `\njs failures (${failures.length}):\n${failures.join('')}`;
  }
  yield `js: ${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped\n`;
  if (process.env.COMPAT_SUMMARY) fs.writeFileSync(process.env.COMPAT_SUMMARY, JSON.stringify(counts));
}
