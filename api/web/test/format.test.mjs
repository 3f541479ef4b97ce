// Unit test of src/format.ts (node --test; run by TestFormat in
// api/internal/web): axis and table labels against values written by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildSync } from 'esbuild';
import { fileURLToPath } from 'node:url';

const src = fileURLToPath(new URL('../src/format.ts', import.meta.url));
const out = buildSync({ entryPoints: [src], bundle: false, format: 'esm', write: false, logLevel: 'error' });
const { si, bytes } = await import('data:text/javascript;base64,' + Buffer.from(out.outputFiles[0].text).toString('base64'));

test('si: SI prefixes and significant digits', () => {
  const cases = [
    [0, '', '0'],
    [0.3, 'b', '0.3 b'],
    [1 / 60, '', '0.01667'],
    [0.0167, '', '0.0167'],
    [12, 'b', '12 b'],
    [999.4, '', '999.4'],
    [1000, 'b', '1 kb'],
    [1500, 'b', '1.5 kb'],
    [4242, '', '4.242 k'],
    [999_950, '', '1 M'],
    [1_234_567, 'b', '1.235 Mb'],
    [7.2e6, 'b', '7.2 Mb'],
    [8e6, 'b', '8 Mb'],
    [2.5e9, 'B', '2.5 GB'],
    [3e12, 'B', '3 TB'],
    [3e15, 'B', '3 PB'],
    [5e18, 'B', '5000 PB'],
    [-1500, 'b', '-1.5 kb'],
    [50, '%', '50 %'],
    [NaN, 'b', ''],
    [Infinity, 'b', ''],
  ];
  for (const [n, unit, want] of cases) assert.equal(si(n, unit), want, `si(${n}, ${JSON.stringify(unit)})`);
});

test('si: ticks of small and large ranges get distinct labels', () => {
  // Ticks ECharts puts on value axes (multiples of 1, 2, 3 or 5 × 10^k from 0).
  const axes = [
    [[0, 0.2, 0.4, 0.6, 0.8, 1], ['0', '0.2', '0.4', '0.6', '0.8', '1']],
    [[0, 0.05, 0.1, 0.15, 0.2], ['0', '0.05', '0.1', '0.15', '0.2']],
    [[0, 0.3, 0.6, 0.9, 1.2], ['0', '0.3', '0.6', '0.9', '1.2']],
    [[0, 250, 500, 750, 1000, 1250], ['0', '250', '500', '750', '1 k', '1.25 k']],
    [[0, 2e8, 4e8, 6e8, 8e8, 1e9, 1.2e9], ['0', '200 M', '400 M', '600 M', '800 M', '1 G', '1.2 G']],
  ];
  for (const [ticks, want] of axes) assert.deepEqual(ticks.map((v) => si(v)), want);
  // The limit: an axis not starting at 0 with a step under 1/1000 of its
  // values would need more digits (the dashboard's axes start at 0).
  assert.equal(si(1_000_500), '1 M');
  assert.equal(si(1_000_500, '', 7), '1.0005 M');
});

test('bytes: three significant digits, SI', () => {
  assert.equal(bytes(0), '0 B');
  assert.equal(bytes(512), '512 B');
  assert.equal(bytes(1234), '1.23 kB');
  assert.equal(bytes(5.5e9), '5.5 GB');
  assert.equal(bytes(null), '');
  assert.equal(bytes(undefined), '');
});
