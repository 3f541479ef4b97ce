package rules

import "net/netip"

// Singles: most originators of probe flows send exactly one in a window —
// every source of a spoofed SYN flood (hping3 --rand-source: a new address
// per packet), backscatter, a stray packet. Opening their portscan and
// hostsweep states (two map entries and two state objects each, for a
// source that never comes back) was most of the engine's CPU under such a
// flood. So an originator's first probe in a window is kept as one small,
// pointer-free entry (single) in a per-window map; its states are opened
// only when a second probe (or an ICMP echo request) from it arrives in
// that window, and the first probe is then counted into them exactly as
// Observe would have counted it. Alerts are the same: one probe cannot
// reach a threshold of 2 or more, and singles are used only then
// (singlesOK).

// skey is the key of a single: sensor, originator and window start (the
// portscan window, equal to the hostsweep window).
type skey struct {
	orig   [16]byte
	win    int64
	sensor uint32
}

// single is an originator's first probe of a window, or (promoted) the
// mark that its states are open.
type single struct {
	resp     [16]byte // responder, 16-byte form of the unmapped address
	t        int64    // flow start, packet time (Unix ns)
	port     uint32   // portscan port key: proto<<16 | responder port
	svc      uint32   // hostsweep service key
	flag     uint32   // flag-probe key (port<<8 | flags), when kind is a flag probe
	kind     uint8    // StealthKind
	promoted bool
	live     bool // counted from a packet summary (ObservePacket), not a flow record
}

// singleWin is the singles of one window.
type singleWin struct {
	win int64
	m   map[skey]single
}

// singlesOK reports whether the configuration lets one probe never fire an
// alert, so that first probes can be kept as singles.
func (e *Engine) singlesOK() bool {
	c := &e.cfg
	return !e.noSingles && c.PortscanWindow == c.SweepWindow && c.PortscanPorts >= 2 && c.SweepHosts >= 2 && c.PortscanFlagProbes != 1
}

// singleMap returns the singles map of window win (made if create).
func (e *Engine) singleMap(win int64, create bool) map[skey]single {
	for _, w := range e.singles {
		if w.win == win {
			return w.m
		}
	}
	if !create {
		return nil
	}
	var w *singleWin
	if n := len(e.spareSingles); n > 0 {
		w, e.spareSingles = e.spareSingles[n-1], e.spareSingles[:n-1]
		w.win = win
	} else {
		w = &singleWin{win: win, m: map[skey]single{}}
	}
	e.singles = append(e.singles, w)
	return w.m
}

// expireSingles drops the singles of windows that ended more than one
// window length before the watermark (as expire does for states).
func (e *Engine) expireSingles() {
	keep := e.singles[:0]
	for _, w := range e.singles {
		d := int64(e.cfg.PortscanWindow)
		if w.win+2*d >= e.watermark {
			keep = append(keep, w)
			continue
		}
		e.nsingles -= len(w.m)
		clear(w.m)
		e.spareSingles = append(e.spareSingles, w)
	}
	clear(e.singles[len(keep):])
	e.singles = keep
}

// firstProbe handles a probe or echo request flow before the portscan and
// hostsweep states are touched: it reports true when the flow was kept as
// its originator's single (nothing else to do), and promotes a single to
// states when its originator sends again.
//
// A probe counted live from its packet (live) and then again from its flow
// record (or its retransmission), or the other way round, is the same
// probe: when it matches the single (responder, port, service, flags) and
// either side is live, it is dropped, so a spoofed source's one SYN opens
// no states. Two flow records never match this way (as before the live
// path: TestSinglesSameAlerts).
func (e *Engine) firstProbe(sensor string, orig, resp netip.Addr, t int64, probe bool, port, svc, flag uint32, kind int, live bool) bool {
	ok := e.singlesOK()
	if !ok && e.nsingles == 0 {
		return false
	}
	win := windowStart(t, e.cfg.PortscanWindow)
	sk := skey{orig: orig.As16(), win: win, sensor: e.sensorID(sensor)}
	m := e.singleMap(win, ok)
	if m == nil {
		return false
	}
	p, found := m[sk]
	switch {
	case found && p.promoted:
		return false
	case found && (p.live || live) && probe && p.resp == resp.As16() && p.port == port && p.svc == svc && p.flag == flag:
		return true
	case found:
		m[sk] = single{promoted: true}
		e.promote(sensor, orig, p)
		return false
	case !ok || len(e.state)+e.nsingles >= e.cfg.MaxKeys:
		return false // the states' own bound applies
	case !probe:
		m[sk] = single{promoted: true}
		e.nsingles++
		return false
	}
	m[sk] = single{resp: resp.As16(), t: t, port: port, svc: svc, flag: flag, kind: uint8(kind), live: live}
	e.nsingles++
	return true
}

// promote opens the portscan and hostsweep states of a single's
// originator and counts its probe into them, as Observe counts a probe
// (below every threshold: no alert).
func (e *Engine) promote(sensor string, orig netip.Addr, p single) {
	resp := netip.AddrFrom16(p.resp).Unmap()
	k := key{rule: portscan, sensor: sensor, orig: orig, target: resp, win: windowStart(p.t, e.cfg.PortscanWindow)}
	s := e.get(k, p.t, e.cfg.PortscanWindow)
	s.flows++
	s.addPort(p.port)
	s.kinds[p.kind]++
	if p.kind >= KindNull && p.kind <= KindOther {
		if s.flagSet == nil {
			s.flagSet = map[uint32]struct{}{}
		}
		s.flagSet[p.flag] = struct{}{}
	}
	k = key{rule: hostsweep, sensor: sensor, orig: orig, win: windowStart(p.t, e.cfg.SweepWindow)}
	s = e.get(k, p.t, e.cfg.SweepWindow)
	s.flows++
	s.addHost(p.svc, resp)
}

// sensorID interns a sensor name (the last one cached).
func (e *Engine) sensorID(sensor string) uint32 {
	if e.lastID != ^uint32(0) && sensor == e.lastSensor {
		return e.lastID
	}
	id, ok := e.sensorIDs[sensor]
	if !ok {
		id = uint32(len(e.sensorIDs))
		e.sensorIDs[sensor] = id
	}
	e.lastSensor, e.lastID = sensor, id
	return id
}
