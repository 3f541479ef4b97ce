package publish

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"netwatch/agent/internal/decode"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// Batcher keeps one open pb.PacketBatch per bucket of schema.PacketsSubject
// and hands full or old batches to a Publisher. Not safe for concurrent use.
type Batcher struct {
	Size  int           // packets per batch; a batch is sent when full
	Flush time.Duration // a batch is sent when its first packet is this old (wall clock)

	sensor, boot string
	pub          *Publisher
	seq          uint64
	buckets      [schema.Buckets]bucket
	l7           decode.L7
	subjects     [schema.Buckets]string
}

type bucket struct {
	sums   []pb.PacketSummary
	addrs  [][32]byte
	ptrs   []*pb.PacketSummary
	n      int
	opened time.Time
}

// NewBatcher returns a batcher of size packets per batch (1024 when 0) and
// flush age (200 ms when 0) for sensor and boot id.
func NewBatcher(pub *Publisher, sensor, boot string, size int, flush time.Duration) *Batcher {
	if size <= 0 {
		size = 1024
	}
	if flush <= 0 {
		flush = 200 * time.Millisecond
	}
	b := &Batcher{Size: size, Flush: flush, sensor: sensor, boot: boot, pub: pub}
	for i := range b.subjects {
		b.subjects[i] = schema.PacketsSubject(sensor, uint32(i))
	}
	return b
}

// Seq is the sequence number of the last message sent.
func (b *Batcher) Seq() uint64 { return b.seq }

// Add appends p (a KindIP packet) to its bucket's batch, decoding light L7
// when the payload looks like DNS, TLS or HTTP, and sends the batch when full.
func (b *Batcher) Add(p *decode.Packet) {
	src, dst := p.Src[:p.AddrLen], p.Dst[:p.AddrLen]
	sport, dport := uint32(p.SrcPort), uint32(p.DstPort)
	bi := schema.PacketBucket(src, sport, dst, dport, uint32(p.Proto), uint32(p.VLAN))
	bk := &b.buckets[bi]
	if bk.sums == nil {
		bk.sums = make([]pb.PacketSummary, b.Size)
		bk.addrs = make([][32]byte, b.Size)
		bk.ptrs = make([]*pb.PacketSummary, 0, b.Size)
	}
	if bk.n == 0 {
		bk.opened = time.Now()
	}
	i := bk.n
	bk.n++
	s := &bk.sums[i]
	a := &bk.addrs[i]
	copy(a[:16], src)
	copy(a[16:], dst)
	s.TsNs = p.TsNs
	s.SrcAddr = a[:p.AddrLen:p.AddrLen]
	s.DstAddr = a[16 : 16+p.AddrLen : 16+p.AddrLen]
	s.SrcPort, s.DstPort, s.Proto = sport, dport, uint32(p.Proto)
	s.IpBytes, s.PayloadBytes = p.IPBytes, p.PayloadBytes
	s.TcpFlags = uint32(p.TCPFlags)
	s.IcmpType, s.IcmpCode = uint32(p.ICMPType), uint32(p.ICMPCode)
	s.Vlan, s.InnerVlan = uint32(p.VLAN), uint32(p.InnerVLAN)
	s.Tunnel, s.TunnelId = pb.Tunnel(p.Tunnel), p.TunnelID
	s.IpId, s.Fragment, s.Ttl = p.IPID, p.Fragment, uint32(p.TTL)
	s.TcpSeq, s.TcpAck, s.TcpWindow = p.Seq, p.Ack, uint32(p.Window)
	s.DnsQuery, s.DnsQtype, s.DnsRcode, s.DnsResponse, s.DnsAnswers = "", 0, 0, false, nil
	s.TlsSni, s.HttpHost, s.HttpMethod, s.HttpUserAgent, s.App = "", "", "", "", ""
	if decode.App(p) != "" {
		decode.ParseL7(p, &b.l7)
		l := &b.l7
		s.App = l.App
		s.DnsQuery, s.DnsQtype, s.DnsRcode, s.DnsResponse = l.DNSQuery, uint32(l.DNSQType), uint32(l.DNSRCode), l.DNSResponse
		for _, an := range l.DNSAnswers {
			s.DnsAnswers = append(s.DnsAnswers, &pb.DNSAnswer{Name: an.Name, Type: uint32(an.Type), Addr: an.Addr, Target: an.Target, Ttl: an.TTL})
		}
		s.TlsSni, s.HttpHost, s.HttpMethod, s.HttpUserAgent = l.TLSSNI, l.HTTPHost, l.HTTPMethod, l.HTTPUA
	}
	if bk.n >= b.Size {
		b.send(bi)
	}
}

func (b *Batcher) send(bi uint32) {
	bk := &b.buckets[bi]
	if bk.n == 0 {
		return
	}
	bk.ptrs = bk.ptrs[:0]
	for i := 0; i < bk.n; i++ {
		bk.ptrs = append(bk.ptrs, &bk.sums[i])
	}
	b.seq++
	batch := pb.PacketBatch{Sensor: b.sensor, Boot: b.boot, Seq: b.seq, Bucket: bi,
		Packets: bk.ptrs, SentNs: time.Now().UnixNano()}
	data, err := proto.Marshal(&batch)
	if err != nil {
		panic(fmt.Sprintf("marshal packet batch: %v", err)) // cannot happen for these fields
	}
	bk.n = 0
	clear(bk.ptrs)
	b.pub.Publish(b.subjects[bi], schema.PacketBatchID(b.sensor, b.boot, b.seq), data)
}

// Tick sends every batch whose first packet is older than Flush at now.
func (b *Batcher) Tick(now time.Time) {
	for i := range b.buckets {
		if bk := &b.buckets[i]; bk.n > 0 && now.Sub(bk.opened) >= b.Flush {
			b.send(uint32(i))
		}
	}
}

// FlushAll sends every open batch.
func (b *Batcher) FlushAll() {
	for i := range b.buckets {
		b.send(uint32(i))
	}
}

// EndOfInput sends every open batch, waits for their acks (so that no
// retried batch can arrive after a marker), then sends an end-of-input
// marker on every bucket of the sensor and waits for those acks.
func (b *Batcher) EndOfInput(ctx context.Context) error {
	b.FlushAll()
	if err := b.pub.Wait(ctx); err != nil {
		return fmt.Errorf("wait for packet batch acks: %w", err)
	}
	for i := uint32(0); i < schema.Buckets; i++ {
		b.seq++
		m := pb.PacketBatch{Sensor: b.sensor, Boot: b.boot, Seq: b.seq, Bucket: i, EndOfInput: true,
			SentNs: time.Now().UnixNano()}
		data, err := proto.Marshal(&m)
		if err != nil {
			return fmt.Errorf("marshal end-of-input marker: %w", err)
		}
		b.pub.Publish(b.subjects[i], schema.PacketBatchID(b.sensor, b.boot, b.seq), data)
	}
	if err := b.pub.Wait(ctx); err != nil {
		return fmt.Errorf("wait for end-of-input acks: %w", err)
	}
	return nil
}
