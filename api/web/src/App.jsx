import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import Chart from './Chart.jsx';
import { useLive } from './live.js';
import { ago, bytes, endpoint, protoName, rate, time } from './format.js';

const WINDOW_S = 300; // throughput chart: last 5 minutes, 1 s buckets
const MAX_FLOWS = 100; // rows in the latest-flows table
const MAX_ALERTS = 50;

async function getJSON(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

// usePoll fetches path every ms milliseconds.
function usePoll(path, ms) {
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let stop = false;
    const load = () =>
      getJSON(path)
        .then((d) => !stop && (setData(d), setError(null)))
        .catch((e) => !stop && setError(String(e)));
    load();
    const t = setInterval(load, ms);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [path, ms]);
  return [data, error];
}

function emptyAgg() {
  return { flows: [], buckets: new Map(), talkers: new Map(), protos: new Map(), alerts: [], metrics: new Map(), total: 0, dropped: 0 };
}

export default function App() {
  const [filter, setFilter] = useState({ sensor: '', addr: '' });
  const [draft, setDraft] = useState(filter);
  const agg = useRef(emptyAgg());
  const [view, setView] = useState(() => snapshot(agg.current));

  const onMessage = useCallback((m) => {
    const a = agg.current;
    if (m.type === 'flow') {
      const f = m.flow;
      a.total++;
      a.flows.unshift(f);
      if (a.flows.length > MAX_FLOWS) a.flows.length = MAX_FLOWS;
      const sec = Math.floor(Date.now() / 1000);
      const b = a.buckets.get(sec) || { bytes: 0, pkts: 0, flows: 0 };
      const fb = f.orig_ip_bytes + f.resp_ip_bytes;
      const fp = f.orig_pkts + f.resp_pkts;
      b.bytes += fb;
      b.pkts += fp;
      b.flows++;
      a.buckets.set(sec, b);
      for (const [addr, sent, recv] of [[f.orig_addr, f.orig_ip_bytes, f.resp_ip_bytes], [f.resp_addr, f.resp_ip_bytes, f.orig_ip_bytes]]) {
        const t = a.talkers.get(addr) || { addr, bytes: 0, sent: 0, recv: 0, flows: 0 };
        t.bytes += sent + recv;
        t.sent += sent;
        t.recv += recv;
        t.flows++;
        a.talkers.set(addr, t);
      }
      const pn = f.app ? `${protoName(f.proto)}/${f.app}` : protoName(f.proto);
      a.protos.set(pn, (a.protos.get(pn) || 0) + fb);
    } else if (m.type === 'alert') {
      a.alerts.unshift(m.alert);
      if (a.alerts.length > MAX_ALERTS) a.alerts.length = MAX_ALERTS;
    } else if (m.type === 'metrics') {
      a.metrics.set(m.metrics.sensor, m.metrics);
    } else if (m.type === 'dropped') {
      a.dropped += m.dropped;
    }
  }, []);

  const status = useLive(filter, onMessage);

  // Render at most once a second, whatever the message rate.
  useEffect(() => {
    const t = setInterval(() => setView(snapshot(agg.current)), 1000);
    return () => clearInterval(t);
  }, []);

  // Recent alerts from history until live ones arrive.
  useEffect(() => {
    const q = new URLSearchParams({ limit: '20' });
    if (filter.sensor) q.set('sensor', filter.sensor);
    if (filter.addr) q.set('addr', filter.addr);
    getJSON(`/api/v1/alerts?${q}`)
      .then((d) => {
        const a = agg.current;
        const seen = new Set(a.alerts.map((x) => x.id));
        for (const x of d.alerts || []) if (!seen.has(x.id)) a.alerts.push(x);
        setView(snapshot(a));
      })
      .catch(() => {});
  }, [filter]);

  const [pipeline, pipelineErr] = usePoll('/api/v1/pipeline', 3000);
  const [sensors, sensorsErr] = usePoll('/api/v1/sensors', 15000);

  const apply = (e) => {
    e.preventDefault();
    agg.current = emptyAgg();
    setView(snapshot(agg.current));
    setFilter({ ...draft });
  };

  return (
    <div className="app">
      <header>
        <h1>netwatch</h1>
        <span className={`status ${status}`} data-testid="ws-status">{status}</span>
        <span data-testid="flow-count">{view.total} flows</span>
        {view.dropped > 0 && <span className="warn" data-testid="dropped">{view.dropped} dropped (too slow)</span>}
        <span data-testid="pipeline-pending" className={pipeline && pipeline.pending > 0 ? 'warn' : ''}>
          pipeline pending: {pipeline ? pipeline.pending : pipelineErr ? 'n/a' : '…'}
        </span>
        <form onSubmit={apply} className="filter">
          <input placeholder="sensor" value={draft.sensor} onChange={(e) => setDraft({ ...draft, sensor: e.target.value })} data-testid="filter-sensor" />
          <input placeholder="address or CIDR" value={draft.addr} onChange={(e) => setDraft({ ...draft, addr: e.target.value })} data-testid="filter-addr" />
          <button type="submit">filter</button>
        </form>
        <a href="/api/docs">API</a>
      </header>

      <section className="wide">
        <h2>Live throughput</h2>
        <Chart testid="throughput-chart" option={view.throughput} />
      </section>

      <section className="wide">
        <h2>Latest flows</h2>
        <div className="scroll">
          <table data-testid="live-flows">
            <thead>
              <tr><th>start</th><th>sensor</th><th>proto</th><th>app</th><th>originator</th><th></th><th>responder</th><th>pkts</th><th>bytes</th><th>state</th></tr>
            </thead>
            <tbody>
              {view.flows.length === 0 && <tr><td colSpan="10" className="muted">waiting for flows…</td></tr>}
              {view.flows.map((f) => (
                <tr key={`${f.id}-${f.record_index}`} data-testid="flow-row" data-flow-id={f.id}>
                  <td>{time(f.start)}</td>
                  <td>{f.sensor}</td>
                  <td>{protoName(f.proto)}</td>
                  <td>{f.app || f.server_name}</td>
                  <td className="addr">{endpoint(f.orig_addr, f.orig_port, f.proto)}</td>
                  <td>→</td>
                  <td className="addr">{endpoint(f.resp_addr, f.resp_port, f.proto)}</td>
                  <td className="num">{f.orig_pkts + f.resp_pkts}</td>
                  <td className="num">{bytes(f.orig_ip_bytes + f.resp_ip_bytes)}</td>
                  <td>{f.conn_state}{f.final ? '' : ' (interim)'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>

      <section>
        <h2>Top talkers (live)</h2>
        <table data-testid="top-talkers">
          <thead><tr><th>address</th><th>bytes</th><th>sent</th><th>received</th><th>flows</th></tr></thead>
          <tbody>
            {view.talkers.map((t) => (
              <tr key={t.addr} data-testid="talker-row">
                <td className="addr">{t.addr}</td><td className="num">{bytes(t.bytes)}</td>
                <td className="num">{bytes(t.sent)}</td><td className="num">{bytes(t.recv)}</td><td className="num">{t.flows}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>

      <section>
        <h2>Protocols (live)</h2>
        <Chart testid="protocol-chart" option={view.protocols} height={240} />
      </section>

      <section>
        <h2>Recent alerts</h2>
        <table data-testid="alerts">
          <thead><tr><th>time</th><th>severity</th><th>category</th><th>source</th><th>target</th><th>summary</th></tr></thead>
          <tbody>
            {view.alerts.length === 0 && <tr><td colSpan="6" className="muted">no alerts</td></tr>}
            {view.alerts.map((a) => (
              <tr key={a.id} data-testid="alert-row" className={`sev-${a.severity}`}>
                <td>{time(a.time)}</td><td>{a.severity}</td><td title={a.technique}>{a.category}</td>
                <td className="addr">{a.orig_addr || '—'}</td><td className="addr">{a.resp_addr || '—'}</td><td>{a.summary}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </section>

      <section>
        <h2>Sensors</h2>
        {sensorsErr && <p className="warn">{sensorsErr}</p>}
        <table data-testid="sensors">
          <thead><tr><th>sensor</th><th>host</th><th>cpu</th><th>memory</th><th>disk</th><th>captured</th><th>dropped</th><th>seen</th></tr></thead>
          <tbody>
            {mergeSensors(sensors, view.metrics).map((s) => {
              const m = s.metrics;
              const caps = (m && m.captures) || [];
              const recv = caps.reduce((n, c) => n + (c.received || 0), 0);
              const drop = caps.reduce((n, c) => n + (c.dropped || 0) + (c.if_dropped || 0), 0);
              const disk = ((m && m.disks) || []).reduce((w, d) => (d.total_bytes && d.used_bytes / d.total_bytes > w ? d.used_bytes / d.total_bytes : w), 0);
              return (
                <tr key={s.sensor} data-testid="sensor-row">
                  <td>{s.sensor}</td>
                  <td>{s.host || (m && m.host)}</td>
                  <td className="num">{m ? `${m.cpu_percent.toFixed(1)} %` : '—'}</td>
                  <td className="num">{m && m.mem_total_bytes ? `${((100 * m.mem_used_bytes) / m.mem_total_bytes).toFixed(0)} % of ${bytes(m.mem_total_bytes)}` : '—'}</td>
                  <td className="num">{m ? `${(100 * disk).toFixed(0)} %` : '—'}</td>
                  <td className="num">{recv}</td>
                  <td className={`num ${drop > 0 ? 'warn' : ''}`}>{drop}</td>
                  <td>{ago((m && m.time) || s.last_seen)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </section>

      <section>
        <h2>Pipeline</h2>
        <table data-testid="pipeline">
          <thead><tr><th>stream</th><th>messages</th><th>bytes</th><th>consumer</th><th>pending</th><th>ack pending</th><th>redelivered</th></tr></thead>
          <tbody>
            {((pipeline && pipeline.streams) || []).flatMap((s) =>
              (s.consumers.length ? s.consumers : [null]).map((c, i) => (
                <tr key={`${s.name}-${c ? c.name : ''}`}>
                  <td>{i === 0 ? s.name : ''}</td>
                  <td className="num">{i === 0 ? s.messages : ''}</td>
                  <td className="num">{i === 0 ? bytes(s.bytes) : ''}</td>
                  <td>{c ? c.name : '—'}</td>
                  <td className={`num ${c && c.pending > 0 ? 'warn' : ''}`}>{c ? c.pending : ''}</td>
                  <td className="num">{c ? c.ack_pending : ''}</td>
                  <td className="num">{c ? c.redelivered : ''}</td>
                </tr>
              )),
            )}
          </tbody>
        </table>
      </section>
    </div>
  );
}

function mergeSensors(rest, live) {
  const out = new Map();
  for (const s of (rest && rest.sensors) || []) out.set(s.sensor, { ...s });
  for (const [name, m] of live) {
    const s = out.get(name) || { sensor: name, host: m.host };
    if (!s.metrics || new Date(m.time) >= new Date(s.metrics.time)) s.metrics = m;
    out.set(name, s);
  }
  return [...out.values()].sort((a, b) => a.sensor.localeCompare(b.sensor));
}

// snapshot turns the live aggregates into what one render needs.
function snapshot(a) {
  const now = Math.floor(Date.now() / 1000);
  for (const k of a.buckets.keys()) if (k <= now - WINDOW_S) a.buckets.delete(k);
  const bps = [];
  const pps = [];
  for (let s = now - WINDOW_S + 1; s <= now; s++) {
    const b = a.buckets.get(s);
    bps.push([s * 1000, b ? b.bytes * 8 : 0]);
    pps.push([s * 1000, b ? b.pkts : 0]);
  }
  const talkers = [...a.talkers.values()].sort((x, y) => y.bytes - x.bytes).slice(0, 10);
  const protos = [...a.protos.entries()].sort((x, y) => y[1] - x[1]);
  const top = protos.slice(0, 8).map(([name, value]) => ({ name, value }));
  const rest = protos.slice(8).reduce((n, [, v]) => n + v, 0);
  if (rest > 0) top.push({ name: 'other', value: rest });
  return {
    total: a.total,
    dropped: a.dropped,
    flows: a.flows.slice(),
    alerts: a.alerts.slice(),
    metrics: new Map(a.metrics),
    talkers,
    throughput: {
      animation: false,
      tooltip: { trigger: 'axis' },
      legend: { data: ['bits/s', 'packets/s'], top: 0 },
      grid: { left: 70, right: 70, top: 50, bottom: 30 },
      xAxis: { type: 'time' },
      yAxis: [
        { type: 'value', name: 'bits/s', axisLabel: { formatter: (v) => rate(v, 'b') } },
        { type: 'value', name: 'packets/s', axisLabel: { formatter: (v) => rate(v, '') } },
      ],
      series: [
        { name: 'bits/s', type: 'line', showSymbol: false, areaStyle: { opacity: 0.2 }, data: bps },
        { name: 'packets/s', type: 'line', showSymbol: false, yAxisIndex: 1, data: pps },
      ],
    },
    protocols: {
      animation: false,
      tooltip: { trigger: 'item', formatter: (p) => `${p.name}: ${bytes(p.value)} (${p.percent}%)` },
      series: [{ type: 'pie', radius: ['40%', '70%'], data: top, label: { formatter: '{b}' } }],
    },
  };
}
