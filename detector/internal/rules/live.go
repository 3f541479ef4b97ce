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
	if n := s.floodCount(); n >= e.cfg.ICMPFloodPkts && e.due(s, e.cfg.ICMPFloodPkts, n) {
		f := &pb.Flow{Sensor: sensor, Proto: proto, IcmpType: typ, OrigAddr: src.AsSlice(), RespAddr: dst.AsSlice(), StartNs: tsNs, EndNs: tsNs}
		return e.floodAlert(k, s, f, e.cfg.ICMPFloodPkts)
	}
	return nil
}
