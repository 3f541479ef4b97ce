package capture

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/afpacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcap"
	"golang.org/x/net/bpf"
)

// AFPacketConfig configures an AF_PACKET (TPACKET_V3) capture.
type AFPacketConfig struct {
	Interface string
	Snaplen   int    // bytes kept per frame (the compiled filter returns at most this many)
	Promisc   bool   // promiscuous mode
	BPF       string // filter expression (pcap-filter(7)), compiled by libpcap; "" for all
	RingBytes int    // ring size of each socket, bytes; 32 MiB when 0
	Fanout    int    // sockets in one PACKET_FANOUT_HASH group, one reader each; 1 when 0
	Timeout   time.Duration
}

// Parallel is a Source read by several goroutines at once: one per member.
// Each member's Next may be called from its own goroutine; the parent's Next
// must not be used when there is more than one member.
type Parallel interface {
	Source
	Members() []Source
}

// RingStater is a Source with AF_PACKET socket statistics (PACKET_STATISTICS,
// summed over every socket since open): frames the kernel delivered to the
// ring, frames dropped because the ring was full, and times the ring queue
// was frozen (TPACKET_V3).
type RingStater interface {
	RingStats() (packets, drops, freezes uint64)
}

// AFPacket captures from an interface through AF_PACKET memory-mapped rings
// (TPACKET_V3), optionally spread over several sockets in a fanout group.
type AFPacket struct {
	name  string
	link  layers.LinkType
	socks []*afSock
}

type afSock struct {
	parent *AFPacket
	tp     *afpacket.TPacket
	// frames stamped before the filter was attached may not have passed it:
	// they are checked in user space with the same program.
	attached time.Time
	vm       *bpf.VM
}

var fanoutSeq atomic.Uint32

// linkTypeOf maps /sys/class/net/IF/type (ARPHRD_*) to the link type of an
// AF_PACKET SOCK_RAW socket: Ethernet and loopback carry an Ethernet header,
// ARPHRD_NONE (tun, wireguard) and ARPHRD_RAWIP carry a bare IP packet.
func linkTypeOf(iface string) (layers.LinkType, error) {
	b, err := os.ReadFile("/sys/class/net/" + iface + "/type")
	if err != nil {
		return 0, fmt.Errorf("open interface %s: %w", iface, err)
	}
	t, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("interface %s: link type %q: %w", iface, b, err)
	}
	switch t {
	case 1, 772: // ARPHRD_ETHER, ARPHRD_LOOPBACK
		return layers.LinkTypeEthernet, nil
	case 65534, 519: // ARPHRD_NONE, ARPHRD_RAWIP
		return layers.LinkTypeRaw, nil
	}
	return 0, fmt.Errorf("interface %s: unsupported ARPHRD type %d for AF_PACKET", iface, t)
}

// dltOf maps a pcap-file link type (LINKTYPE_*, tcpdump.org/linktypes.html)
// to the libpcap DLT_* value that pcap_compile expects (pcap.CompileBPFFilter
// takes a DLT). They differ only for raw IP: LINKTYPE_RAW is 101, DLT_RAW is
// 12 on Linux (pcap/dlt.h); every other link type the AF_PACKET path opens
// (Ethernet 1, LINKTYPE_IPV4 228, LINKTYPE_IPV6 229) has the same number.
func dltOf(link layers.LinkType) layers.LinkType {
	if link == layers.LinkTypeRaw {
		return 12 // DLT_RAW on Linux (pcap/dlt.h)
	}
	return link
}

// OpenAFPacket opens c.Fanout sockets on c.Interface, each with its own
// ring of c.RingBytes, joined in one PACKET_FANOUT_HASH group (the kernel
// hashes the symmetric flow key, so both directions of a flow, and every
// fragment of a datagram — hashed on addresses only — reach the same
// socket). The filter is compiled by libpcap for the interface's link type
// and c.Snaplen and attached as classic BPF; an empty filter still caps
// frames at Snaplen.
func OpenAFPacket(c AFPacketConfig, supported func(layers.LinkType) bool) (*AFPacket, error) {
	link, err := linkTypeOf(c.Interface)
	if err != nil {
		return nil, err
	}
	if !supported(link) {
		return nil, fmt.Errorf("interface %s: unsupported link type %d (%s)", c.Interface, int(link), link)
	}
	expr := c.BPF
	prog, err := pcap.CompileBPFFilter(dltOf(link), c.Snaplen, expr)
	if err != nil {
		return nil, fmt.Errorf("compile bpf filter %q: %w", expr, err)
	}
	raw := make([]bpf.RawInstruction, len(prog))
	for i, in := range prog {
		raw[i] = bpf.RawInstruction{Op: in.Code, Jt: in.Jt, Jf: in.Jf, K: in.K}
	}
	insns, ok := bpf.Disassemble(raw)
	if !ok {
		return nil, fmt.Errorf("bpf filter %q: cannot disassemble", expr)
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		return nil, fmt.Errorf("bpf filter %q: %w", expr, err)
	}
	ring := c.RingBytes
	if ring <= 0 {
		ring = 32 << 20
	}
	const block = 1 << 20 // holds the largest frame (snaplen <= 262144)
	blocks := max(ring/block, 1)
	n := max(c.Fanout, 1)
	to := c.Timeout
	if to <= 0 {
		to = 100 * time.Millisecond
	}
	a := &AFPacket{name: c.Interface, link: link}
	group := uint16(os.Getpid()) ^ uint16(fanoutSeq.Add(1)<<11)
	for i := 0; i < n; i++ {
		tp, err := afpacket.NewTPacket(afpacket.OptInterface(c.Interface), afpacket.TPacketVersion3,
			afpacket.OptBlockSize(block), afpacket.OptNumBlocks(blocks), afpacket.OptFrameSize(4096),
			afpacket.OptPollTimeout(to), afpacket.OptBlockTimeout(10*time.Millisecond), afpacket.OptAddVLANHeader(true))
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("open af_packet socket on %s: %w", c.Interface, err)
		}
		s := &afSock{parent: a, tp: tp, vm: vm}
		a.socks = append(a.socks, s)
		if err := tp.SetBPF(raw); err != nil {
			a.Close()
			return nil, fmt.Errorf("attach bpf filter %q: %w", expr, err)
		}
		s.attached = time.Now()
		if c.Promisc {
			if err := tp.SetPromiscuous(true); err != nil {
				a.Close()
				return nil, fmt.Errorf("set promisc on %s: %w", c.Interface, err)
			}
		}
		if n > 1 {
			if err := tp.SetFanout(afpacket.FanoutHash, group); err != nil {
				a.Close()
				return nil, fmt.Errorf("join fanout group %d: %w", group, err)
			}
		}
	}
	return a, nil
}

// Next reads the next frame of socket s. data is valid until the next call.
func (s *afSock) Next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	for {
		data, ci, err := s.tp.ZeroCopyReadPacketData()
		if err == afpacket.ErrTimeout {
			return nil, ci, s.parent.link, ErrTimeout
		}
		if err != nil {
			return nil, ci, s.parent.link, fmt.Errorf("read %s: %w", s.parent.name, err)
		}
		if s.vm != nil {
			// The socket was bound, and received every frame, before its
			// filter was attached: filter what was stamped until then.
			if !ci.Timestamp.Before(s.attached) {
				s.vm = nil
			} else if k, err := s.vm.Run(data); err != nil || k == 0 {
				continue
			} else if k < len(data) {
				data = data[:k]
				ci.CaptureLength = k
			}
		}
		return data, ci, s.parent.link, nil
	}
}

func (s *afSock) LinkType() layers.LinkType              { return s.parent.link }
func (s *afSock) Stats() (uint64, uint64, bool)          { return s.parent.Stats() }
func (s *afSock) Name() string                           { return s.parent.name }
func (s *afSock) Close() error                           { return nil }
func (s *afSock) RingStats() (packets, drops, fr uint64) { return s.parent.RingStats() }

// Members implements Parallel: one Source per socket of the fanout group.
// Their Close does nothing; close the AFPacket.
func (a *AFPacket) Members() []Source {
	m := make([]Source, len(a.socks))
	for i, s := range a.socks {
		m[i] = s
	}
	return m
}

// Next implements Source for a single socket (Fanout 1).
func (a *AFPacket) Next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	return a.socks[0].Next()
}

// LinkType implements Source.
func (a *AFPacket) LinkType() layers.LinkType { return a.link }

// Name implements Source.
func (a *AFPacket) Name() string { return a.name }

// RingStats implements RingStater.
func (a *AFPacket) RingStats() (packets, drops, freezes uint64) {
	for _, s := range a.socks {
		_, v3, err := s.tp.SocketStats()
		if err != nil {
			continue
		}
		packets += uint64(v3.Packets())
		drops += uint64(v3.Drops())
		freezes += uint64(v3.QueueFreezes())
	}
	return
}

// Stats implements Source: dropped is the rings' drops (frames the kernel
// could not place in a full ring); AF_PACKET has no interface drop counter.
func (a *AFPacket) Stats() (uint64, uint64, bool) {
	_, d, _ := a.RingStats()
	return d, 0, true
}

// Close implements Source.
func (a *AFPacket) Close() error {
	for _, s := range a.socks {
		s.tp.Close()
	}
	a.socks = nil
	return nil
}
