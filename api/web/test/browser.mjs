// Browser test of the dashboard, driven by api/internal/server/browser_test.go:
// opens BASE_URL in headless Debian chromium (playwright-core, never a
// downloaded browser), waits for the live feed, then for the flows the Go
// test publishes (EXPECT_IDS, comma-separated flow ids) to appear in the
// live flows table, and checks the throughput chart rendered a canvas.
// Prints "connected" once the page's WebSocket is live; exits 0 on success.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.BASE_URL;
const ids = (process.env.EXPECT_IDS || '').split(',').filter(Boolean);
const timeout = Number(process.env.TIMEOUT_MS || 20000);
const shot = process.env.SCREENSHOT || '';
if (!base || ids.length === 0) {
  console.error('set BASE_URL and EXPECT_IDS');
  process.exit(2);
}

const profile = mkdtempSync(join(tmpdir(), 'netwatch-chromium-'));
// A fresh profile (--user-data-dir) per run.
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1400, height: 1000 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let ok = false;
try {
  const page = await browser.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(base + '/', { waitUntil: 'domcontentloaded', timeout });
  await page.getByTestId('ws-status').filter({ hasText: 'live' }).waitFor({ timeout });
  console.log('connected');
  for (const id of ids) {
    await page.locator(`[data-testid="live-flows"] [data-testid="flow-row"][data-flow-id="${id}"]`).waitFor({ timeout });
  }
  const rows = await page.locator('[data-testid="live-flows"] [data-testid="flow-row"]').count();
  if (rows < ids.length) throw new Error(`${rows} flow rows, want ${ids.length}`);
  const firstRow = await page.locator('[data-testid="flow-row"]').first().innerText();
  await page.locator('[data-testid="throughput-chart"] canvas').first().waitFor({ timeout });
  await page.locator('[data-testid="top-talkers"] [data-testid="talker-row"]').first().waitFor({ timeout });
  await page.locator('[data-testid="pipeline-pending"]').filter({ hasText: /pending: \d+/ }).waitFor({ timeout });
  if (shot) await page.screenshot({ path: shot, fullPage: true });
  if (errors.length) throw new Error('page errors: ' + errors.join('; '));
  console.log(`ok: ${rows} rows; first: ${firstRow.replace(/\s+/g, ' ')}`);
  ok = true;
} catch (e) {
  console.error('FAIL', e && e.message ? e.message : e);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(ok ? 0 : 1);
