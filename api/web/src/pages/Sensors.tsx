import { useMemo, useState } from 'react';
import Chart, { lineOption } from '../Chart.tsx';
import { query } from '../api.ts';
import { si } from '../format.ts';
import { useFetch } from '../hooks.ts';
import { useRange } from '../range.tsx';
import type { Metrics, Sensor } from '../types.ts';
import { SensorCard } from './Overview.tsx';

export default function Sensors() {
  const { range } = useRange();
  const sensors = useFetch<{ sensors: Sensor[] }>('/api/v1/sensors', 15000);
  const [picked, setPicked] = useState('');
  const list = sensors.data?.sensors || [];
  const sensor = picked || list[0]?.sensor || '';
  // One sample per step: a long range (24 h of 10 s samples) fits the
  // 1,000-sample limit instead of showing only its newest samples.
  const step = range ? Math.max(1, Math.ceil((Date.parse(range.to) - Date.parse(range.from)) / 1000 / 900)) + 's' : '';
  const inRange = sensor && range ? query('/api/v1/metrics/hosts', { sensor, from: range.from, to: range.to, step, limit: 1000 }) : null;
  const ranged = useFetch<{ metrics: Metrics[] }>(inRange);
  // Host metrics carry wall-clock times; a range over a replayed capture's
  // packet times may hold none: then show the latest samples instead.
  const latest = sensor && ranged.data && ranged.data.metrics.length === 0 ? query('/api/v1/metrics/hosts', { sensor, limit: 360 }) : null;
  const fallback = useFetch<{ metrics: Metrics[] }>(latest);
  const src = latest || inRange;
  const samples = useMemo(() => [...((latest ? fallback.data : ranged.data)?.metrics || [])].reverse(), [latest, fallback.data, ranged.data]);
  const charts = useMemo(() => {
    if (!samples.length) return null;
    const cpu = samples.map((m) => [m.time, m.cpu_percent] as [string, number]);
    const mem = samples.map((m) => [m.time, m.mem_used_bytes] as [string, number]);
    const disk = samples.map((m) => [m.time, Math.max(0, ...m.disks.map((d) => (d.total_bytes ? (100 * d.used_bytes) / d.total_bytes : 0)))] as [string, number]);
    const rx: [string, number][] = [];
    const tx: [string, number][] = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1];
      const b = samples[i];
      const dt = (Date.parse(b.time) - Date.parse(a.time)) / 1000;
      if (dt <= 0 || a.boot !== b.boot) continue;
      const sum = (m: Metrics, k: 'rx_bytes' | 'tx_bytes') => m.interfaces.reduce((n, x) => n + x[k], 0);
      rx.push([b.time, Math.max(0, (8 * (sum(b, 'rx_bytes') - sum(a, 'rx_bytes'))) / dt)]);
      tx.push([b.time, Math.max(0, (8 * (sum(b, 'tx_bytes') - sum(a, 'tx_bytes'))) / dt)]);
    }
    return {
      cpu: lineOption([{ name: 'CPU %', data: cpu, area: true }], [{ name: '%', fmt: (v) => si(v, '%') }]),
      mem: lineOption([{ name: 'memory used', data: mem, area: true }], [{ name: 'bytes', fmt: (v) => si(v, 'B') }]),
      disk: lineOption([{ name: 'fullest disk %', data: disk }], [{ name: '%', fmt: (v) => si(v, '%') }]),
      net: lineOption([{ name: 'received', data: rx }, { name: 'sent', data: tx }], [{ name: 'bits/s', fmt: (v) => si(v, 'b') }]),
    };
  }, [samples]);
  return (
    <div className="grid">
      <section className="wide">
        <h2>Fleet</h2>
        {sensors.error && <p className="warn">{sensors.error}</p>}
        <div className="cards">
          {list.length === 0 && <p className="muted">no sensors yet</p>}
          {list.map((s) => (
            <div key={s.sensor} onClick={() => setPicked(s.sensor)} className={`pick ${s.sensor === sensor ? 'active' : ''}`}>
              <SensorCard s={s} />
            </div>
          ))}
        </div>
      </section>
      {sensor && (
        <>
          <section className="wide">
            <h2>System metrics of {sensor} {latest && <span className="muted">(none in the range: the latest samples)</span>}</h2>
            {!charts && <p className="muted">no host metrics</p>}
          </section>
          <section><h2>CPU</h2><Chart testid="sensor-cpu-chart" option={charts?.cpu || null} src={src || undefined} map="~metrics.cpu_percent" /></section>
          <section><h2>Memory</h2><Chart testid="sensor-mem-chart" option={charts?.mem || null} src={src || undefined} map="~metrics.mem_used_bytes" /></section>
          <section><h2>Disk</h2><Chart testid="sensor-disk-chart" option={charts?.disk || null} src={src || undefined} map="=fullest-disk" /></section>
          <section><h2>Interface throughput</h2><Chart testid="sensor-net-chart" option={charts?.net || null} src={src || undefined} map="=interface-rates" /></section>
        </>
      )}
    </div>
  );
}
