package capture

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcap"
)

// LiveConfig configures a libpcap capture.
type LiveConfig struct {
	Interface string
	Snaplen   int    // bytes kept per frame
	Promisc   bool   // promiscuous mode
	BPF       string // filter expression (pcap-filter(7)); "" for all
	Timeout   time.Duration
}

// Live captures from an interface through libpcap.
type Live struct {
	name string
	h    *pcap.Handle
	link layers.LinkType
}

// OpenLive activates a capture. supported reports whether the interface's
// link type can be decoded; an unsupported one is an error here.
func OpenLive(c LiveConfig, supported func(layers.LinkType) bool) (*Live, error) {
	in, err := pcap.NewInactiveHandle(c.Interface)
	if err != nil {
		return nil, fmt.Errorf("open interface %s: %w", c.Interface, err)
	}
	defer in.CleanUp()
	if err := in.SetSnapLen(c.Snaplen); err != nil {
		return nil, fmt.Errorf("set snaplen %d: %w", c.Snaplen, err)
	}
	if err := in.SetPromisc(c.Promisc); err != nil {
		return nil, fmt.Errorf("set promisc: %w", err)
	}
	to := c.Timeout
	if to <= 0 {
		to = 100 * time.Millisecond
	}
	if err := in.SetTimeout(to); err != nil {
		return nil, fmt.Errorf("set timeout: %w", err)
	}
	_ = in.SetBufferSize(32 << 20)
	h, err := in.Activate()
	if err != nil {
		return nil, fmt.Errorf("activate capture on %s: %w", c.Interface, err)
	}
	link := h.LinkType()
	if !supported(link) {
		h.Close()
		return nil, fmt.Errorf("interface %s: unsupported link type %d (%s)", c.Interface, int(link), link)
	}
	if c.BPF != "" {
		if err := h.SetBPFFilter(c.BPF); err != nil {
			h.Close()
			return nil, fmt.Errorf("set bpf filter %q: %w", c.BPF, err)
		}
	}
	return &Live{name: c.Interface, h: h, link: link}, nil
}

// Next implements Source; it returns ErrTimeout when no frame arrived in the
// read timeout.
func (l *Live) Next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	data, ci, err := l.h.ZeroCopyReadPacketData()
	if err == pcap.NextErrorTimeoutExpired {
		return nil, ci, l.link, ErrTimeout
	}
	if err != nil {
		return nil, ci, l.link, fmt.Errorf("read %s: %w", l.name, err)
	}
	return data, ci, l.link, nil
}

// LinkType implements Source.
func (l *Live) LinkType() layers.LinkType { return l.link }

// Stats implements Source with libpcap's ps_drop and ps_ifdrop.
func (l *Live) Stats() (uint64, uint64, bool) {
	s, err := l.h.Stats()
	if err != nil {
		return 0, 0, false
	}
	return uint64(s.PacketsDropped), uint64(s.PacketsIfDropped), true
}

// Name implements Source.
func (l *Live) Name() string { return l.name }

// Close implements Source.
func (l *Live) Close() error { l.h.Close(); return nil }

// ExcludeFilter returns "not (tcp port A or tcp port B ...)" for the ports of
// natsURLs (comma-separated, default 4222) and the comma-separated ports list,
// AND-ed with user when user is not empty.
func ExcludeFilter(user, natsURLs, ports string) (string, error) {
	seen := map[int]bool{}
	var list []int
	add := func(s string) error {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("port %q: want 1..65535", s)
		}
		if !seen[n] {
			seen[n] = true
			list = append(list, n)
		}
		return nil
	}
	for _, u := range strings.Split(natsURLs, ",") {
		u = strings.TrimSpace(u)
		if u == "" {
			continue
		}
		if i := strings.Index(u, "://"); i >= 0 {
			u = u[i+3:]
		}
		if i := strings.LastIndex(u, "@"); i >= 0 {
			u = u[i+1:]
		}
		if i := strings.IndexByte(u, '/'); i >= 0 {
			u = u[:i]
		}
		port := "4222"
		if i := strings.LastIndexByte(u, ':'); i >= 0 && !strings.HasSuffix(u, "]") {
			port = u[i+1:]
		}
		if err := add(port); err != nil {
			return "", fmt.Errorf("nats url %q: %w", u, err)
		}
	}
	for _, p := range strings.Split(ports, ",") {
		if err := add(p); err != nil {
			return "", fmt.Errorf("-exclude.ports: %w", err)
		}
	}
	if len(list) == 0 {
		return user, nil
	}
	parts := make([]string, len(list))
	for i, p := range list {
		parts[i] = "tcp port " + strconv.Itoa(p)
	}
	f := "not (" + strings.Join(parts, " or ") + ")"
	if strings.TrimSpace(user) != "" {
		f = "(" + user + ") and " + f
	}
	return f, nil
}
