// Browser test of the dashboard, driven by api/internal/server/browser_test.go
// against a real pipeline: opens BASE_URL in headless Debian chromium
// (playwright-core, never a downloaded browser) at 1280x800 and at 390x844,
// and on each: waits for the live feed (prints "connected" the first time,
// so that the Go test publishes a live alert, LIVE_ALERT_ID, which must then
// show up), checks that every chart's series (ECharts getOption()) equal
// what the REST API answers for the same range (the chart's data-src and
// data-map attributes) and label their value axes' ticks distinctly, that
// no page scrolls sideways, and clicks through
// Overview, Flows and a flow's detail, Alerts and an alert's detail
// (acknowledging it at the first size, closing it at the second), a Host and
// Sensors. Screenshots go to SCREENSHOT_DIR. Exits 0 on success.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const base = process.env.BASE_URL;
// The live alert's id: LIVE_ALERT_ID, or with LIVE_ALERT_STDIN=1 the first
// line on stdin, written by the Go test once the detector raised a real
// alert on a capture the agent replays after "connected".
let liveAlert = process.env.LIVE_ALERT_ID || '';
async function readLine() {
  let buf = '';
  for await (const chunk of process.stdin) {
    buf += chunk;
    const i = buf.indexOf('\n');
    if (i >= 0) return buf.slice(0, i).trim();
  }
  return buf.trim();
}
const timeout = Number(process.env.TIMEOUT_MS || 20000);
const shots = process.env.SCREENSHOT_DIR || '';
if (!base) {
  console.error('set BASE_URL');
  process.exit(2);
}

// checkChart runs in the page: the chart's series equal the REST answer.
// data-map lists, per series, "key.field" (or "~key.field": reversed) of the
// answer whose values the series plots.
async function checkChart(id) {
  const el = document.querySelector(`[data-testid="${id}"]`);
  const chart = window.netwatchCharts && window.netwatchCharts[id];
  if (!el || !chart) return { error: `${id}: no chart` };
  const { src, map } = el.dataset;
  if (!src || !map) return { error: `${id}: no data-src/data-map` };
  const tok = localStorage.getItem('netwatch.token');
  const r = await fetch(src, { headers: tok ? { Authorization: `Bearer ${tok}` } : {} });
  if (!r.ok) return { error: `${id}: ${src}: ${r.status}` };
  const answer = await r.json();
  const series = chart.getOption().series;
  let points = 0;
  let nonzero = 0;
  // Derived series, computed here from the REST samples (oldest first) by
  // their definitions: "=fullest-disk" the largest used/total of a sample's
  // disks in %; "=interface-rates" received and sent bit/s between
  // consecutive samples of one boot (sum over interfaces, never negative).
  const derived = (name, ms) => {
    ms = [...ms].reverse();
    if (name === 'fullest-disk') return [ms.map((m) => Math.max(0, ...m.disks.map((d) => (d.total_bytes ? (100 * d.used_bytes) / d.total_bytes : 0))))];
    const rx = [];
    const tx = [];
    for (let i = 1; i < ms.length; i++) {
      const dt = (Date.parse(ms[i].time) - Date.parse(ms[i - 1].time)) / 1000;
      if (dt <= 0 || ms[i].boot !== ms[i - 1].boot) continue;
      const sum = (m, k) => m.interfaces.reduce((n, x) => n + x[k], 0);
      rx.push(Math.max(0, (8 * (sum(ms[i], 'rx_bytes') - sum(ms[i - 1], 'rx_bytes'))) / dt));
      tx.push(Math.max(0, (8 * (sum(ms[i], 'tx_bytes') - sum(ms[i - 1], 'tx_bytes'))) / dt));
    }
    return [rx, tx];
  };
  if (map.startsWith('=')) {
    const wants = derived(map.slice(1), answer.metrics);
    for (let i = 0; i < wants.length; i++) {
      const got = (series[i] ? series[i].data : []).map((d) => (Array.isArray(d) ? d[1] : d));
      if (JSON.stringify(got) !== JSON.stringify(wants[i])) {
        return { error: `${id} series ${i}: chart ${JSON.stringify(got).slice(0, 300)} != ${map} of REST ${src} ${JSON.stringify(wants[i]).slice(0, 300)}` };
      }
      points += got.length;
      nonzero += got.filter((v) => v).length;
    }
    return { points, nonzero, src };
  }
  const specs = map.split(';');
  for (let i = 0; i < specs.length; i++) {
    let spec = specs[i];
    const rev = spec.startsWith('~');
    if (rev) spec = spec.slice(1);
    const [key, field] = spec.split('.');
    const want = answer[key].map((x) => x[field]);
    if (rev) want.reverse();
    const got = (series[i] ? series[i].data : []).map((d) => (Array.isArray(d) ? d[1] : d && typeof d === 'object' ? d.value : d));
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      return { error: `${id} series ${i}: chart ${JSON.stringify(got).slice(0, 300)} != REST ${src} ${key}.${field} ${JSON.stringify(want).slice(0, 300)}` };
    }
    points += got.length;
    nonzero += got.filter((v) => v).length;
  }
  return { points, nonzero, src };
}

// checkAxes runs in the page: on each value axis of the chart, the labels
// ECharts draws for its ticks are distinct (no "0 0 0 1 1" for ticks 0 to
// 0.8) and a tick other than 0 is not labelled as zero.
function checkAxes(id) {
  const chart = window.netwatchCharts && window.netwatchCharts[id];
  if (!chart) return { error: `${id}: no chart` };
  const out = [];
  for (const dim of ['xAxis', 'yAxis']) {
    for (let i = 0; i < (chart.getOption()[dim] || []).length; i++) {
      const axis = chart.getModel().getComponent(dim, i).axis;
      if (!axis || axis.type !== 'value') continue;
      const labels = axis.getViewLabels().map((l) => ({ v: Number(l.tick ? l.tick.value : l.tickValue), text: l.formattedLabel }));
      const shown = labels.map((l) => l.text).join(' | ');
      if (!labels.length || labels.some((l) => Number.isNaN(l.v))) return { error: `${id} ${dim} ${i}: no tick values: ${shown}` };
      const texts = new Set(labels.map((l) => l.text));
      if (texts.size !== labels.length) return { error: `${id} ${dim} ${i}: ticks ${labels.map((l) => l.v)} share labels: ${shown}` };
      const zero = labels.find((l) => l.v !== 0 && /^-?0(\.0*)?(\s|$)/.test(l.text));
      if (zero) return { error: `${id} ${dim} ${i}: tick ${zero.v} labelled ${zero.text}: ${shown}` };
      out.push(shown);
    }
  }
  return { axes: out };
}

async function axes(page, id) {
  const res = await page.evaluate(checkAxes, id);
  if (res.error) throw new Error(res.error);
  console.log(`chart ${id} axis labels: ${res.axes.join(' ; ')}`);
}

async function charts(page, ids, mustHaveData) {
  for (const id of ids) {
    await page.locator(`[data-testid="${id}"][data-ready="true"]`).waitFor({ timeout });
    // A chart may be redrawn once its range settles: retry briefly.
    let res;
    for (let i = 0; i < 20; i++) {
      res = await page.evaluate(checkChart, id);
      if (!res.error) break;
      await page.waitForTimeout(250);
    }
    if (res.error) throw new Error(res.error);
    if (mustHaveData && res.nonzero === 0) throw new Error(`${id}: no data (${res.src})`);
    console.log(`chart ${id}: ${res.points} points equal ${res.src}`);
    await axes(page, id);
  }
}

async function noSidewaysScroll(page, what) {
  const { sw, w } = await page.evaluate(() => ({ sw: document.documentElement.scrollWidth, w: window.innerWidth }));
  if (sw > w) throw new Error(`${what}: the page scrolls sideways (${sw} > ${w} px)`);
}

async function shot(page, name) {
  if (shots) await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

const profile = mkdtempSync(join(tmpdir(), 'netwatch-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let ok = false;
try {
  let first = true;
  for (const [w, h] of [[1280, 800], [390, 844]]) {
    const size = `${w}x${h}`;
    const page = await browser.newPage();
    await page.setViewportSize({ width: w, height: h });
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));

    // Overview.
    await page.goto(base + '/#/', { waitUntil: 'domcontentloaded', timeout });
    await page.getByTestId('ws-status').filter({ hasText: 'live' }).waitFor({ timeout });
    if (first) console.log('connected');
    if (first && process.env.LIVE_ALERT_STDIN === '1') {
      liveAlert = await readLine();
      if (!liveAlert) throw new Error('no live alert id from the test');
      console.log(`live alert ${liveAlert} from the detector`);
    }
    if (liveAlert) await page.locator(`[data-testid="alerts"] [data-alert-id="${liveAlert}"]`).waitFor({ timeout });
    if (first && process.env.LIVE_PPS) {
      // The live chart plots the COUNTERS messages the Go test publishes:
      // LIVE_PPS packets and LIVE_BPS / 8 bytes in one second.
      const [pps, bps] = [Number(process.env.LIVE_PPS), Number(process.env.LIVE_BPS)];
      await page.waitForFunction(([pps, bps]) => {
        const c = window.netwatchCharts && window.netwatchCharts['live-chart'];
        if (!c) return false;
        const s = c.getOption().series;
        return s[0].data.some((d) => d[1] === bps) && s[1].data.some((d) => d[1] === pps);
      }, [pps, bps], { timeout });
      console.log(`live chart: ${bps} bit/s and ${pps} packets/s from the counters feed`);
      await axes(page, 'live-chart');
    }
    await page.locator('[data-testid="top-talkers"] [data-testid="talker-row"]').first().waitFor({ timeout });
    await page.locator('[data-testid="sensor-card"]').first().waitFor({ timeout });
    await charts(page, ['traffic-chart', 'protocol-chart'], true);
    await noSidewaysScroll(page, `overview ${size}`);
    await shot(page, `overview-${size}`);
    const talker = await page.locator('[data-testid="talker-row"] a').first().innerText();

    // Flows and a flow's detail.
    await page.getByTestId('nav-flows').click();
    await page.locator('[data-testid="flow-row"]').first().waitFor({ timeout });
    await noSidewaysScroll(page, `flows ${size}`);
    await shot(page, `flows-${size}`);
    const flowId = await page.locator('[data-testid="flow-row"]').first().getAttribute('data-flow-id');
    await page.locator('[data-testid="flow-row"] a').first().click();
    await page.locator(`[data-testid="flow-detail"][data-flow-id="${flowId}"]`).waitFor({ timeout });
    const cid = await page.getByTestId('community-id').innerText();
    const flow = await page.evaluate(async (id) => (await fetch(`/api/v1/flows/${id}`)).json(), flowId);
    if (!cid.startsWith('1:') || cid !== flow.community_id) throw new Error(`flow ${flowId}: Community ID ${cid}, REST ${flow.community_id}`);
    await noSidewaysScroll(page, `flow detail ${size}`);
    await shot(page, `flow-${size}`);
    // Its Community ID in the explorer: the flows search with that filter.
    await page.getByTestId('same-community-id').click();
    await page.locator(`[data-testid="flow-row"][data-flow-id="${flowId}"]`).waitFor({ timeout });
    const same = await page.evaluate(async (c) => (await fetch(`/api/v1/flows?community_id=${encodeURIComponent(c)}`)).json(), cid);
    const rows = await page.locator('[data-testid="flow-row"]').count();
    if (rows !== same.flows.length) throw new Error(`community_id ${cid}: ${rows} rows, REST ${same.flows.length}`);

    // Alerts and an alert's detail: acknowledge, then close.
    await page.getByTestId('nav-alerts').click();
    await page.locator('[data-testid="alerts-table"] [data-testid="alert-row"]').first().waitFor({ timeout });
    await noSidewaysScroll(page, `alerts ${size}`);
    await shot(page, `alerts-${size}`);
    const alertRow = page.locator('[data-testid="alerts-table"] [data-testid="alert-row"]:not([data-alert-id="' + liveAlert + '"])').first();
    const alertId = await alertRow.getAttribute('data-alert-id');
    await alertRow.locator('a').first().click();
    await page.locator(`[data-testid="alert-detail"][data-alert-id="${alertId}"]`).waitFor({ timeout });
    const evidence = await page.getByTestId('evidence').innerText();
    if (!evidence.trim().startsWith('{')) throw new Error(`alert ${alertId}: evidence ${evidence}`);
    const want = first ? 'acknowledged' : 'closed';
    await page.getByTestId('alert-note').fill(`browser test ${size}`);
    await page.getByTestId(first ? 'ack-button' : 'close-button').click();
    await page.getByTestId('alert-status').filter({ hasText: want }).waitFor({ timeout });
    const stored = await page.evaluate(async (id) => (await fetch(`/api/v1/alerts/${id}`)).json(), alertId);
    if (stored.status !== want || stored.status_note !== `browser test ${size}`) throw new Error(`alert ${alertId}: REST says ${stored.status} ${stored.status_note}`);
    await noSidewaysScroll(page, `alert detail ${size}`);
    await shot(page, `alert-${size}`);

    // A host: the top talker of the overview.
    await page.getByTestId('nav-host').click();
    await page.getByTestId('host-addr').fill(talker);
    await page.getByTestId('host-addr').press('Enter');
    await page.getByTestId('host-title').filter({ hasText: talker }).waitFor({ timeout });
    await charts(page, ['host-traffic-chart', 'host-ports-chart', 'host-countries-chart'], true);
    await page.locator('[data-testid="host-peers"] [data-testid="peer-row"]').first().waitFor({ timeout });
    await noSidewaysScroll(page, `host ${size}`);
    await shot(page, `host-${size}`);

    // Sensors.
    await page.getByTestId('nav-sensors').click();
    await page.locator('[data-testid="sensor-card"]').first().waitFor({ timeout });
    await charts(page, ['sensor-cpu-chart', 'sensor-mem-chart', 'sensor-disk-chart', 'sensor-net-chart'], false);
    await noSidewaysScroll(page, `sensors ${size}`);
    await shot(page, `sensors-${size}`);

    if (errors.length) throw new Error(`page errors at ${size}: ${errors.join('; ')}`);
    await page.close();
    first = false;
  }
  console.log('ok');
  ok = true;
} catch (e) {
  console.error('FAIL', e && e.message ? e.message : e);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(ok ? 0 : 1);
