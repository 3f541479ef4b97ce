package schema

import "netwatch/schema/pb"

// Text names of the wire enums, as stored in PostgreSQL and shown by the api.

// EndReasonName is "idle", "active", "fin", "rst", "eof" or "shutdown", or ""
// for END_UNKNOWN and values this version does not know.
func EndReasonName(r pb.EndReason) string {
	switch r {
	case pb.EndReason_END_IDLE:
		return "idle"
	case pb.EndReason_END_ACTIVE:
		return "active"
	case pb.EndReason_END_FIN:
		return "fin"
	case pb.EndReason_END_RST:
		return "rst"
	case pb.EndReason_END_EOF:
		return "eof"
	case pb.EndReason_END_SHUTDOWN:
		return "shutdown"
	case pb.EndReason_END_EVICTED:
		return "evicted"
	}
	return ""
}

// TunnelName is "gre", "erspan", "vxlan", "geneve", "ipip" or "other", or ""
// for no tunnel.
func TunnelName(t pb.Tunnel) string {
	switch t {
	case pb.Tunnel_TUNNEL_NONE:
		return ""
	case pb.Tunnel_TUNNEL_GRE:
		return "gre"
	case pb.Tunnel_TUNNEL_ERSPAN:
		return "erspan"
	case pb.Tunnel_TUNNEL_VXLAN:
		return "vxlan"
	case pb.Tunnel_TUNNEL_GENEVE:
		return "geneve"
	case pb.Tunnel_TUNNEL_IPIP:
		return "ipip"
	}
	return "other"
}

// Severities are the alert severity names in increasing order.
var Severities = []string{"info", "low", "medium", "high", "critical"}

// SeverityName is one of Severities, or "unknown" for SEVERITY_UNKNOWN and
// values this version does not know.
func SeverityName(v pb.Severity) string {
	if v >= pb.Severity_SEVERITY_INFO && v <= pb.Severity_SEVERITY_CRITICAL {
		return Severities[v-pb.Severity_SEVERITY_INFO]
	}
	return "unknown"
}
