// The api's JSON shapes (api/README.md, /api/openapi.json).

export interface Flow {
  id: string; community_id: string; sensor: string; proto: number;
  orig_addr: string; orig_port: number; resp_addr: string; resp_port: number;
  vlan: number; inner_vlan: number; icmp_type: number; icmp_code: number;
  start: string; end: string; flow_start: string; duration: number;
  orig_pkts: number; orig_ip_bytes: number; orig_bytes: number;
  resp_pkts: number; resp_ip_bytes: number; resp_bytes: number;
  orig_tcp_flags: number; resp_tcp_flags: number; record_index: number; final: boolean;
  end_reason: string; direction_guessed: boolean; app: string; conn_state: string; history: string;
  tunnel: string; tunnel_id: number; server_name: string; direction: string; orig_name: string; resp_name: string;
  orig_country: string; orig_city: string; orig_asn: number; orig_as_org: string;
  resp_country: string; resp_city: string; resp_asn: number; resp_as_org: string;
  app_from_port: boolean; ja3: string; ja4: string; http_user_agent: string;
}

export interface Alert {
  id: string; time: string; sensor: string; severity: string; category: string; technique: string;
  orig_addr?: string; resp_addr?: string; summary: string; evidence: Record<string, unknown>;
  rule: string; score: number; window_start?: string; window_end?: string;
  status: string; status_by: string; status_at?: string; status_note: string;
}

export interface Disk { mount: string; total_bytes: number; used_bytes: number }
export interface Iface { name: string; rx_bytes: number; tx_bytes: number; rx_dropped: number; tx_dropped: number }
export interface Capture { source: string; received: number; dropped: number; if_dropped: number; buffer_dropped?: number }

export interface Metrics {
  sensor: string; host: string; time: string; boot: string; seq: number; cpu_percent: number;
  mem_total_bytes: number; mem_used_bytes: number; load1: number; uptime_s: number;
  disks: Disk[]; interfaces: Iface[]; captures: Capture[];
}

export interface Sensor {
  sensor: string; host: string; first_seen: string; last_seen: string; online: boolean; last_flow?: string;
  metrics: Metrics | null; received: number; dropped: number; interfaces: string[]; lag_seconds?: number;
  version: string; capture_interfaces: string[]; started?: string; heartbeat?: string;
}

export interface Counters { sensor: string; time: string; packets: number; ip_bytes: number; bps: number; pps: number; syn: number }

export interface LiveMessage {
  type: 'flow' | 'alert' | 'metrics' | 'counters' | 'dropped' | 'error' | 'replay_end';
  flow?: Flow; alert?: Alert; metrics?: Metrics; counters?: Counters; dropped?: number; closing?: boolean;
}
