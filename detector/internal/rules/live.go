package rules

import (
	"net/netip"

	"netwatch/schema/pb"
)

// Live ICMP flood detection. A flood of ICMP echo requests with one ICMP
// id (hping3 --icmp, ping -f) is one long flow: the enricher emits its
// record at the active timeout (5 min) or the idle timeout after it ends,
// so icmp_flood over flow records fired minutes after the threshold was
// crossed. The packet summaries are on PACKETS at once (the detector-arp
// consumer already reads every PacketBatch), so the stage counts the ICMP
// requests among them (IsICMPRequest: direction known per packet, unlike
// COUNTERS, whose per-responder icmp also counts the echo replies going
// back to the flooder) into the same per-target state as the flow records.
// The state's count is the larger of the two counts (flow records and
// packets cover the same packets; summing them would count each twice),
// so the alert id, the threshold and the updates are those of icmp_flood.

// floodCount is a flood state's packet count: the flow records' or the
// live packets', whichever is larger.
func (s *state) floodCount() int { return max(s.count, s.pcount) }

// ObserveICMPPacket counts one ICMP packet from sensor's packet summaries
// (proto 1 or 58, ICMP type typ, packet time tsNs, Unix ns) for icmp_flood
// and returns the alert it triggers: when the responder's count in its
// -flood.window reaches -icmp-flood.pkts, with the packet's time (the
// threshold crossing itself), and at each doubling after. Replies and
// errors are ignored. Packet times do not move the engine's watermark
// (flow end times do): the states expire with the flows' windows.
func (e *Engine) ObserveICMPPacket(sensor string, src, dst netip.Addr, proto, typ uint32, tsNs int64) *pb.Alert {
	if !IsICMPRequest(proto, typ) || !src.IsValid() || !dst.IsValid() {
		return nil
	}
	src, dst = src.Unmap(), dst.Unmap()
	k := key{rule: icmpFlood, sensor: sensor, target: dst, win: windowStart(tsNs, e.cfg.FloodWindow)}
	s := e.get(k, tsNs, e.cfg.FloodWindow)
	s.pcount++
	s.addSource(src)
	e.addPacketCID(s, src, dst, proto, 0, 0, typ)
	if n := s.floodCount(); n >= e.cfg.ICMPFloodPkts && e.due(s, e.cfg.ICMPFloodPkts, n) {
		f := &pb.Flow{Sensor: sensor, Proto: proto, IcmpType: typ, OrigAddr: src.AsSlice(), RespAddr: dst.AsSlice(), StartNs: tsNs, EndNs: tsNs}
		return e.floodAlert(k, s, f, e.cfg.ICMPFloodPkts)
	}
	return nil
}

// Live scans and floods. The flow record of a one-SYN flow (a spoofed SYN
// flood's sources, a SYN scan's filtered ports) reaches the detector only
// at the enricher's TCP idle timeout (5 min), and a UDP probe's at the UDP
// one (1 min), so portscan, hostsweep, syn_flood and udp_flood also count
// the packet summaries of PACKETS as they arrive (ObservePacket), into the
// same states as the flow records:
//
//   - syn_flood: SYNs (SYN without ACK or RST, no payload) to the target,
//     less those of connections whose originator then sent an ACK or
//     payload (IsHalfOpen's "never ACK, no payload", per connection: the
//     SYNs wait in a table of half-open connections for one flood window);
//     with the same 10 SYNs per distinct port condition. The count is the
//     larger of the flow records' and the packets' (as icmp_flood).
//   - udp_flood: UDP packets to the target, except those from a port below
//     1024 to one at or above it (a service answering a client: the flow
//     rule counts originator packets only).
//   - portscan, hostsweep: each TCP packet that opens a probe (SYN without
//     ACK or RST, or a flag probe: StealthKind NULL/FIN/Xmas/other, no
//     payload) and each UDP packet as above is a one-packet probe flow, and
//     each ICMP echo request a one-packet echo flow, counted as Observe
//     counts flows: distinct ports and hosts are sets, so a probe seen as a
//     packet and then in its flow record counts once (an originator's single
//     probe is matched, firstProbe); the evidence's probe_flows counts both.

// Packet is one packet summary (schema PacketSummary) as the live rules
// read it.
type Packet struct {
	TsNs             int64      // packet time, Unix ns
	Src, Dst         netip.Addr // innermost IP header
	SrcPort, DstPort uint32     // 0 for ICMP
	Proto            uint32     // IP protocol number
	Payload          uint32     // transport payload bytes
	TCPFlags         uint32     // TCP flags byte (FIN 0x01 ... CWR 0x80)
	ICMPType         uint32     // ICMP / ICMPv6 type
}

// hkey is a connection whose SYN is waiting for the originator's ACK.
type hkey struct {
	src, dst     [16]byte
	sport, dport uint16
	sensor       uint32
}

// hval is the flood window of a half-open connection's SYNs and their number.
type hval struct {
	win int64
	n   int32
}

// ObservePacket runs the live rules (icmp_flood, syn_flood, udp_flood,
// portscan, hostsweep) on one packet summary of sensor and appends the
// alerts it triggers to out (their time is the packet's). Packets without
// valid addresses, and protocols other than TCP, UDP, ICMP and ICMPv6, are
// ignored. Packet times do not move the engine's watermark.
func (e *Engine) ObservePacket(out []*pb.Alert, sensor string, p *Packet) []*pb.Alert {
	if !p.Src.IsValid() || !p.Dst.IsValid() {
		return out
	}
	src, dst := p.Src.Unmap(), p.Dst.Unmap()
	f := &e.pf
	switch p.Proto {
	case 1, 58:
		if !e.targetRules() {
		} else if a := e.ObserveICMPPacket(sensor, src, dst, p.Proto, p.ICMPType, p.TsNs); a != nil {
			out = append(out, a)
		}
		if e.origRules() && ((p.Proto == 1 && p.ICMPType == 8) || (p.Proto == 58 && p.ICMPType == 128)) {
			*f = pb.Flow{Proto: p.Proto, IcmpType: p.ICMPType, StartNs: p.TsNs, EndNs: p.TsNs, OrigPkts: 1}
			out = e.observeProbe(out, sensor, f, src, dst, p.TsNs, false, true)
		}
	case 6:
		fl := p.TCPFlags & 0x3f
		if !e.targetRules() {
		} else if p.Payload == 0 && fl&flagSYN != 0 && fl&(flagACK|flagRST) == 0 {
			out = e.liveSYN(out, sensor, src, dst, p)
		} else if fl&flagACK != 0 && fl&flagSYN == 0 || p.Payload > 0 {
			e.liveAck(sensor, src, dst, p)
		}
		opens := fl&flagSYN != 0 && fl&(flagACK|flagRST) == 0 || fl&(flagSYN|flagACK|flagRST) == 0
		if opens && p.Payload == 0 && e.origRules() {
			*f = pb.Flow{Proto: 6, OrigPort: p.SrcPort, RespPort: p.DstPort, OrigTcpFlags: fl, StartNs: p.TsNs, EndNs: p.TsNs, OrigPkts: 1}
			out = e.observeProbe(out, sensor, f, src, dst, p.TsNs, true, true)
		}
	case 17:
		if p.SrcPort < 1024 && p.DstPort >= 1024 {
			return out // a service's answer
		}
		*f = pb.Flow{Proto: 17, OrigPort: p.SrcPort, RespPort: p.DstPort, StartNs: p.TsNs, EndNs: p.TsNs, OrigPkts: 1}
		if e.targetRules() {
			k := key{rule: udpFlood, sensor: sensor, target: dst, win: windowStart(p.TsNs, e.cfg.FloodWindow)}
			s := e.get(k, p.TsNs, e.cfg.FloodWindow)
			s.pcount++
			s.addSource(src)
			e.addPacketCID(s, src, dst, 17, p.SrcPort, p.DstPort, 0)
			if n := s.floodCount(); n >= e.cfg.UDPFloodPkts && e.due(s, e.cfg.UDPFloodPkts, n) {
				out = append(out, e.floodAlert(k, s, f, e.cfg.UDPFloodPkts))
			}
		}
		if e.origRules() {
			out = e.observeProbe(out, sensor, f, src, dst, p.TsNs, true, true)
		}
	}
	return out
}

// liveSYN counts a SYN for syn_flood and holds its connection as half-open.
func (e *Engine) liveSYN(out []*pb.Alert, sensor string, src, dst netip.Addr, p *Packet) []*pb.Alert {
	win := windowStart(p.TsNs, e.cfg.FloodWindow)
	if win > e.halfWin {
		e.sweepHalf(win)
	}
	k := key{rule: synFlood, sensor: sensor, target: dst, win: win}
	s := e.get(k, p.TsNs, e.cfg.FloodWindow)
	s.pcount++
	s.addPort(p.DstPort)
	e.addPacketCID(s, src, dst, 6, p.SrcPort, p.DstPort, 0)
	hk := hkey{src: src.As16(), dst: dst.As16(), sport: uint16(p.SrcPort), dport: uint16(p.DstPort), sensor: e.sensorID(sensor)}
	if e.half == nil {
		e.half = map[hkey]hval{}
	}
	if v, ok := e.half[hk]; ok && v.win == win {
		v.n++
		e.half[hk] = v
	} else if ok || len(e.half) < e.cfg.MaxKeys {
		e.half[hk] = hval{win: win, n: 1}
	}
	if n := s.floodCount(); n >= e.cfg.SynFloodPkts && n >= synPerPort*s.nports && e.due(s, e.cfg.SynFloodPkts, n) {
		e.halfSources(s, hk.sensor, hk.dst, win)
		f := &e.pf
		*f = pb.Flow{Proto: 6, OrigPort: p.SrcPort, RespPort: p.DstPort, OrigTcpFlags: flagSYN, StartNs: p.TsNs, EndNs: p.TsNs, OrigPkts: 1}
		out = append(out, e.floodAlert(k, s, f, e.cfg.SynFloodPkts))
	}
	return out
}

// liveAck ends a half-open connection whose originator sent an ACK or
// payload: its SYNs no longer count for syn_flood.
func (e *Engine) liveAck(sensor string, src, dst netip.Addr, p *Packet) {
	if len(e.half) == 0 {
		return
	}
	hk := hkey{src: src.As16(), dst: dst.As16(), sport: uint16(p.SrcPort), dport: uint16(p.DstPort), sensor: e.sensorID(sensor)}
	v, ok := e.half[hk]
	if !ok {
		return
	}
	delete(e.half, hk)
	if s, ok := e.state[e.mk(key{rule: synFlood, sensor: sensor, target: dst, win: v.win})]; ok {
		s.pcount = max(s.pcount-int(v.n), 0)
	}
}

// sweepHalf drops the half-open connections of windows before the one
// ending at win (their SYNs stay counted: never completed within a
// window).
func (e *Engine) sweepHalf(win int64) {
	e.halfWin = win
	for k, v := range e.half {
		if v.win < win-int64(e.cfg.FloodWindow) {
			delete(e.half, k)
		}
	}
}

// halfSources adds the sources of the connections to dst still half-open
// in window win to a syn_flood state's sources (addSource), stopping at a
// second one. It runs when an alert is due (at the threshold and its
// doublings), not per SYN: a source whose connections complete (a client
// of the target) never names the flood's sources as many.
func (e *Engine) halfSources(s *state, sensor uint32, dst [16]byte, win int64) {
	for k, v := range e.half {
		if s.manySrc {
			return
		}
		if v.win == win && k.dst == dst && k.sensor == sensor {
			s.addSource(netip.AddrFrom16(k.src).Unmap())
		}
	}
}
