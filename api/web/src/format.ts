// Formatting helpers for the dashboard.

const PROTOS: Record<number, string> = { 1: 'icmp', 2: 'igmp', 6: 'tcp', 17: 'udp', 47: 'gre', 50: 'esp', 58: 'icmp6', 132: 'sctp' };

export function protoName(n: number): string {
  return PROTOS[n] ?? String(n);
}

function scaled(n: number, units: string[], k: number): [number, string] {
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= k && i < units.length - 1) {
    v /= k;
    i++;
  }
  return [v, units[i]];
}

export function bytes(n: number | null | undefined): string {
  if (n == null) return '';
  const [v, u] = scaled(n, ['B', 'KB', 'MB', 'GB', 'TB'], 1000);
  return `${u === 'B' ? v : v.toFixed(1)} ${u}`;
}

export function rate(n: number, unit: string): string {
  const [v, u] = scaled(n, ['', 'k', 'M', 'G', 'T'], 1000);
  return `${v.toFixed(u === '' ? 0 : 1)} ${u}${unit}`;
}

export function endpoint(addr: string, port: number, proto: number): string {
  if (proto === 1 || proto === 58 || !port) return addr;
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

export function time(s: string | undefined): string {
  if (!s) return '';
  return new Date(s).toISOString().replace('T', ' ').slice(0, 19);
}

export function ago(s: string | undefined): string {
  if (!s) return 'never';
  const sec = Math.max(0, (Date.now() - new Date(s).getTime()) / 1000);
  if (sec < 60) return `${Math.round(sec)} s ago`;
  if (sec < 3600) return `${Math.round(sec / 60)} min ago`;
  if (sec < 86400) return `${Math.round(sec / 3600)} h ago`;
  return `${Math.round(sec / 86400)} d ago`;
}

export function pct(part: number, whole: number): string {
  return whole ? `${((100 * part) / whole).toFixed(0)} %` : '—';
}
