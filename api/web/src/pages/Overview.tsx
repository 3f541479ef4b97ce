import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import Chart, { lineOption, pieOption } from '../Chart.tsx';
import { query } from '../api.ts';
import { ago, bytes, pct, protoName, si, time } from '../format.ts';
import { useFetch, useLive } from '../hooks.ts';
import { useRange } from '../range.tsx';
import type { Alert, Counters, LiveMessage, Metrics, Sensor } from '../types.ts';

const WINDOW_S = 300; // live chart: the last 5 minutes of counters

interface Point { time: string; bps: number; pps: number }
interface Protocol { proto: number; name: string; app: string; bytes: number }
interface Talker { addr: string; bytes: number; pkts: number; sent_bytes: number; recv_bytes: number; flows: number }

export default function Overview() {
  const { range } = useRange();
  const counters = useRef(new Map<number, { bytes: number; pkts: number }>());
  const [liveAlerts, setLiveAlerts] = useState<Alert[]>([]);
  const [liveMetrics, setLiveMetrics] = useState<Record<string, Metrics>>({});
  const [tick, setTick] = useState(0);
  const [dropped, setDropped] = useState(0);

  const onMessage = useCallback((m: LiveMessage) => {
    if (m.type === 'counters' && m.counters) {
      const c: Counters = m.counters;
      const sec = Math.floor(Date.parse(c.time) / 1000);
      const b = counters.current.get(sec) || { bytes: 0, pkts: 0 };
      b.bytes += c.ip_bytes;
      b.pkts += c.packets;
      counters.current.set(sec, b);
    } else if (m.type === 'alert' && m.alert) {
      const a = m.alert;
      setLiveAlerts((xs) => [a, ...xs.filter((x) => x.id !== a.id)].slice(0, 20));
    } else if (m.type === 'metrics' && m.metrics) {
      const mt = m.metrics;
      setLiveMetrics((xs) => ({ ...xs, [mt.sensor]: mt }));
    } else if (m.type === 'dropped') {
      setDropped((n) => n + (m.dropped || 0));
    }
  }, []);
  const status = useLive({ types: 'counters,alert,metrics' }, onMessage);
  useEffect(() => {
    const t = setInterval(() => setTick((x) => x + 1), 1000);
    return () => clearInterval(t);
  }, []);

  // The live chart: per second of packet time, the newest 5 minutes seen.
  const liveOption = useMemo(() => {
    const secs = [...counters.current.keys()].sort((a, b) => a - b);
    const newest = secs.length ? secs[secs.length - 1] : Math.floor(Date.now() / 1000);
    for (const s of secs) if (s <= newest - WINDOW_S) counters.current.delete(s);
    const bps: [number, number][] = [];
    const pps: [number, number][] = [];
    for (let s = newest - WINDOW_S + 1; s <= newest; s++) {
      const b = counters.current.get(s);
      bps.push([s * 1000, b ? b.bytes * 8 : 0]);
      pps.push([s * 1000, b ? b.pkts : 0]);
    }
    return lineOption(
      [{ name: 'bits/s', data: bps, area: true }, { name: 'packets/s', data: pps, axis: 1 }],
      [{ name: 'bits/s', fmt: (v) => si(v, 'b') }, { name: 'pkts/s', fmt: (v) => si(v, '') }],
    );
  }, [tick]);

  const r = range ? { from: range.from, to: range.to } : null;
  const tsURL = r ? query('/api/v1/timeseries', { ...r, step: range!.step }) : null;
  const protoURL = r ? query('/api/v1/protocols', r) : null;
  const talkURL = r ? query('/api/v1/top-talkers', { ...r, limit: 10 }) : null;
  const ts = useFetch<{ points: Point[] }>(tsURL);
  const protos = useFetch<{ protocols: Protocol[] }>(protoURL);
  const talkers = useFetch<{ talkers: Talker[] }>(talkURL);
  const alerts = useFetch<{ alerts: Alert[] }>(query('/api/v1/alerts', { limit: 10 }), 30000);
  const sensors = useFetch<{ sensors: Sensor[] }>('/api/v1/sensors', 15000);

  const tsOption = useMemo(() => ts.data && lineOption(
    [{ name: 'bits/s', data: ts.data.points.map((p) => [p.time, p.bps]), area: true },
      { name: 'packets/s', data: ts.data.points.map((p) => [p.time, p.pps]), axis: 1 }],
    [{ name: 'bits/s', fmt: (v) => si(v, 'b') }, { name: 'pkts/s', fmt: (v) => si(v, '') }],
  ), [ts.data]);
  const protoOption = useMemo(() => protos.data && pieOption('bytes',
    protos.data.protocols.map((p) => ({ name: p.app ? `${p.name}/${p.app}` : protoName(p.proto), value: p.bytes })), bytes), [protos.data]);

  const shownAlerts = useMemo(() => {
    const seen = new Set<string>();
    return [...liveAlerts, ...(alerts.data?.alerts || [])].filter((a) => !seen.has(a.id) && !!seen.add(a.id)).slice(0, 10);
  }, [liveAlerts, alerts.data]);

  const fleet = (sensors.data?.sensors || []).map((s) => ({ ...s, metrics: liveMetrics[s.sensor] || s.metrics }));

  return (
    <div className="grid">
      <section className="wide">
        <h2>Live traffic <span className={`status ${status}`} data-testid="ws-status">{status}</span>
          {dropped > 0 && <span className="warn" data-testid="dropped"> {dropped} live messages dropped (too slow)</span>}</h2>
        <Chart testid="live-chart" option={liveOption} height={200} />
      </section>
      <section className="wide">
        <h2>Traffic in the range</h2>
        {ts.error && <p className="warn">{ts.error}</p>}
        <Chart testid="traffic-chart" option={tsOption} src={tsURL || undefined} map="points.bps;points.pps" />
      </section>
      <section>
        <h2>Protocols and applications</h2>
        <Chart testid="protocol-chart" option={protoOption} src={protoURL || undefined} map="protocols.bytes" />
      </section>
      <section>
        <h2>Top talkers</h2>
        <div className="scroll">
          <table data-testid="top-talkers">
            <thead><tr><th>address</th><th>bytes</th><th>sent</th><th>received</th><th>flows</th></tr></thead>
            <tbody>
              {(talkers.data?.talkers || []).map((t) => (
                <tr key={t.addr} data-testid="talker-row">
                  <td className="addr"><a href={`#/host/${encodeURIComponent(t.addr)}`}>{t.addr}</a></td>
                  <td className="num">{bytes(t.bytes)}</td><td className="num">{bytes(t.sent_bytes)}</td>
                  <td className="num">{bytes(t.recv_bytes)}</td><td className="num">{t.flows}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section>
        <h2>Latest alerts</h2>
        <div className="scroll">
          <table data-testid="alerts">
            <thead><tr><th>time</th><th>severity</th><th>category</th><th>source</th><th>summary</th></tr></thead>
            <tbody>
              {shownAlerts.length === 0 && <tr><td colSpan={5} className="muted">no alerts</td></tr>}
              {shownAlerts.map((a) => (
                <tr key={`${a.id}-${a.time}`} data-testid="alert-row" data-alert-id={a.id} className={`sev-${a.severity}`}>
                  <td>{time(a.time)}</td><td>{a.severity}</td>
                  <td><a href={`#/alerts/${a.id}`}>{a.category}</a></td>
                  <td className="addr">{a.orig_addr || '—'}</td><td className="summary">{a.summary}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section className="wide">
        <h2>Sensors</h2>
        <div className="cards">
          {fleet.length === 0 && <p className="muted">no sensors yet</p>}
          {fleet.map((s) => <SensorCard key={s.sensor} s={s} />)}
        </div>
      </section>
    </div>
  );
}

function lag(sec: number): string {
  if (sec < 120) return `${sec.toFixed(1)} s`;
  if (sec < 7200) return `${(sec / 60).toFixed(0)} min`;
  if (sec < 172800) return `${(sec / 3600).toFixed(0)} h`;
  return `${(sec / 86400).toFixed(0)} d (a replay)`;
}

export function SensorCard({ s }: { s: Sensor }) {
  const m = s.metrics;
  const caps = m?.captures || [];
  const recv = caps.reduce((n, c) => n + (c.received || 0), 0);
  const drop = caps.reduce((n, c) => n + (c.dropped || 0) + (c.if_dropped || 0) + (c.buffer_dropped || 0), 0);
  const disk = (m?.disks || []).reduce((w, d) => (d.total_bytes && d.used_bytes / d.total_bytes > w ? d.used_bytes / d.total_bytes : w), 0);
  const online = s.online || (m ? Date.now() - Date.parse(m.time) < 60_000 : false);
  return (
    <div className="card" data-testid="sensor-card" data-sensor={s.sensor}>
      <h3><span className={`dot ${online ? 'on' : 'off'}`} title={online ? 'online' : 'offline'} />{s.sensor}</h3>
      <div className="muted">{s.host || m?.host}{s.version && ` · ${s.version}`} · seen {ago(s.heartbeat || m?.time || s.last_seen)}</div>
      <dl>
        <dt>CPU</dt><dd>{m ? `${m.cpu_percent.toFixed(1)} %` : '—'}</dd>
        <dt>memory</dt><dd>{m ? pct(m.mem_used_bytes, m.mem_total_bytes) : '—'}</dd>
        <dt>disk</dt><dd>{m ? `${(100 * disk).toFixed(0)} %` : '—'}</dd>
        <dt>captured</dt><dd>{recv}</dd>
        <dt>drops</dt><dd className={drop > 0 ? 'warn' : ''}>{drop}</dd>
        <dt>flow lag</dt><dd title="stored time minus last packet time of its newest flow">{s.lag_seconds != null ? lag(s.lag_seconds) : '—'}</dd>
        <dt>capturing</dt><dd>{(s.capture_interfaces || []).join(', ') || '—'}</dd>
        <dt>interfaces</dt><dd>{(m?.interfaces || []).map((i) => i.name).join(', ') || '—'}</dd>
      </dl>
    </div>
  );
}
