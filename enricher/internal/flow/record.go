package flow

import (
	"net/netip"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// addrs returns the originator and responder addresses (views of the key).
func (e *entry) addrs() (orig, resp []byte) {
	n := e.key.addrLen()
	if e.origIsA {
		return e.key.A[:n], e.key.B[:n]
	}
	return e.key.B[:n], e.key.A[:n]
}

func (e *entry) ports() (orig, resp uint16) {
	if e.key.Proto == 1 || e.key.Proto == 58 {
		return 0, 0
	}
	if e.origIsA {
		return e.key.APort, e.key.BPort
	}
	return e.key.BPort, e.key.APort
}

// direction classifies a flow by local networks: outbound (local → remote),
// inbound, internal (both local) or external (neither).
func direction(local []netip.Prefix, orig, resp []byte) string {
	in := func(b []byte) bool {
		a, _ := netip.AddrFromSlice(b)
		for _, p := range local {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
		return false
	}
	switch o, r := in(orig), in(resp); {
	case o && r:
		return "internal"
	case o:
		return "outbound"
	case r:
		return "inbound"
	}
	return "external"
}

// emitRecord passes the current record of e to the table's emit function
// and starts a new record (counts zero, record index + 1).
func (t *Table) emitRecord(e *entry, final bool, reason pb.EndReason) {
	oa, ra := e.addrs()
	op, rp := e.ports()
	o, r := e.c[0], e.c[1]
	app := e.app
	if app == "" {
		app = portApp(e.key.Proto, rp)
	}
	f := &pb.Flow{
		Sensor: t.cfg.Sensor, CommunityId: e.cid, Proto: uint32(e.key.Proto),
		OrigAddr: append([]byte(nil), oa...), OrigPort: uint32(op),
		RespAddr: append([]byte(nil), ra...), RespPort: uint32(rp),
		Vlan: e.key.VLAN, InnerVlan: e.key.InnerVLAN,
		StartNs: e.recStart, EndNs: e.recLast,
		OrigPkts: o.pkts, OrigIpBytes: o.ipBytes, OrigBytes: o.bytes, OrigTcpFlags: o.flags,
		RespPkts: r.pkts, RespIpBytes: r.ipBytes, RespBytes: r.bytes, RespTcpFlags: r.flags,
		RecordIndex: e.recIndex, Final: final, EndReason: reason, DirectionGuessed: e.guessed,
		App: app, ConnState: e.connState(), History: string(e.hist),
		Tunnel: pb.Tunnel(e.key.Tunnel), TunnelId: e.key.TunnelID, FlowStartNs: e.flowStart,
		ServerName: e.server, Direction: e.direction,
	}
	if e.key.Proto == 1 || e.key.Proto == 58 {
		f.IcmpType, f.IcmpCode = uint32(e.icmpType), uint32(e.icmpCode)
	}
	f.Id = schema.FlowID(t.cfg.Sensor, f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort,
		f.Vlan, f.InnerVlan, f.TunnelId, f.FlowStartNs, f.RecordIndex)
	f.Features = features(f)
	refs := e.refs
	e.refs = nil
	e.c = [2]counts{}
	e.recIndex++
	t.emit(Record{Flow: f, Refs: refs})
}

// features are the detector's per-record numbers: duration in seconds,
// packet and byte counts, rates and ratios (0 when undefined).
func features(f *pb.Flow) map[string]float64 {
	dur := float64(f.EndNs-f.StartNs) / 1e9
	pk := float64(f.OrigPkts + f.RespPkts)
	ipb := float64(f.OrigIpBytes + f.RespIpBytes)
	pl := float64(f.OrigBytes + f.RespBytes)
	m := map[string]float64{
		"duration_s":     dur,
		"orig_pkts":      float64(f.OrigPkts),
		"resp_pkts":      float64(f.RespPkts),
		"orig_bytes":     float64(f.OrigBytes),
		"resp_bytes":     float64(f.RespBytes),
		"orig_ip_bytes":  float64(f.OrigIpBytes),
		"resp_ip_bytes":  float64(f.RespIpBytes),
		"pkts":           pk,
		"ip_bytes":       ipb,
		"mean_pkt_bytes": 0, "orig_bytes_ratio": 0, "orig_pkts_ratio": 0,
		"pkts_per_s": 0, "bytes_per_s": 0,
		"resp_replied": 0, "syn_only": 0, "rst": 0,
	}
	if pk > 0 {
		m["mean_pkt_bytes"] = ipb / pk
		m["orig_pkts_ratio"] = float64(f.OrigPkts) / pk
	}
	if pl > 0 {
		m["orig_bytes_ratio"] = float64(f.OrigBytes) / pl
	}
	if dur > 0 {
		m["pkts_per_s"] = pk / dur
		m["bytes_per_s"] = ipb / dur
	}
	if f.RespPkts > 0 {
		m["resp_replied"] = 1
	}
	if f.Proto == 6 && f.OrigTcpFlags&(flagSYN|flagACK) == flagSYN && f.RespPkts == 0 {
		m["syn_only"] = 1
	}
	if (f.OrigTcpFlags|f.RespTcpFlags)&flagRST != 0 {
		m["rst"] = 1
	}
	return m
}
