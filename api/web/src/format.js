// Formatting helpers for the dashboard.

const PROTOS = { 1: 'icmp', 2: 'igmp', 6: 'tcp', 17: 'udp', 47: 'gre', 50: 'esp', 58: 'icmp6', 132: 'sctp' };

export function protoName(n) {
  return PROTOS[n] ?? String(n);
}

export function bytes(n) {
  if (n == null) return '';
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1000 && i < u.length - 1) {
    v /= 1000;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${u[i]}`;
}

export function rate(n, unit) {
  const u = ['', 'k', 'M', 'G', 'T'];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1000 && i < u.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${u[i]}${unit}`;
}

export function endpoint(addr, port, proto) {
  if (proto === 1 || proto === 58 || !port) return addr;
  return addr.includes(':') ? `[${addr}]:${port}` : `${addr}:${port}`;
}

export function time(s) {
  if (!s) return '';
  const d = new Date(s);
  return d.toISOString().replace('T', ' ').slice(0, 23);
}

export function ago(s) {
  if (!s) return 'never';
  const sec = Math.max(0, (Date.now() - new Date(s).getTime()) / 1000);
  if (sec < 60) return `${Math.round(sec)} s ago`;
  if (sec < 3600) return `${Math.round(sec / 60)} min ago`;
  if (sec < 86400) return `${Math.round(sec / 3600)} h ago`;
  return `${Math.round(sec / 86400)} d ago`;
}
