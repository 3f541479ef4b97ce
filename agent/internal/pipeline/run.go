package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/agent/internal/capture"
	"netwatch/agent/internal/decode"
	"netwatch/agent/internal/fragment"
	"netwatch/agent/internal/hostmetrics"
	"netwatch/agent/internal/publish"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// Stats are the capture counters since start (pb.CaptureStats).
type Stats struct {
	Received, IPPackets, NonIP, Malformed, IPBytes atomic.Uint64
	Dropped, IfDropped                             atomic.Uint64
	PublishedBatches                               atomic.Uint64
	// AF_PACKET socket statistics (PACKET_STATISTICS, all sockets): frames
	// the kernel handed to the rings, frames dropped on a full ring (also in
	// Dropped), times a TPACKET_V3 ring queue was frozen.
	RingPackets, RingDrops, RingFreezes atomic.Uint64
	// ARP is the number of ARP/RARP frames summarized (Ethernet/IPv4,
	// published in PacketBatch.arp); they are counted in NonIP too.
	ARP atomic.Uint64
	// Truncated is the number of IP frames cut by the snaplen inside their
	// innermost IP header, before both addresses, or inside a tunnel's
	// inner frame before its IP length field (decode.KindTruncated):
	// counted in IPPackets and IPBytes (from the innermost length field, or
	// the outer ones minus the encapsulation), not published in a flow
	// (METRICS: pb.CaptureStats.truncated).
	Truncated atomic.Uint64
}

// Decoders caches one decoder per link type (pcapng interfaces may differ).
type Decoders struct {
	m map[layers.LinkType]*decode.Decoder
}

// Get returns the decoder of link, or nil when the link type is unsupported.
func (d *Decoders) Get(link layers.LinkType) *decode.Decoder {
	if dec, ok := d.m[link]; ok {
		return dec
	}
	if d.m == nil {
		d.m = map[layers.LinkType]*decode.Decoder{}
	}
	dec, err := decode.New(link)
	if err != nil {
		dec = nil
	}
	d.m[link] = dec
	return dec
}

// ReasonUnsupportedLink counts frames of a pcapng interface whose link type
// the decoder does not read.
const ReasonUnsupportedLink = "unsupported_link_type"

// NewBoot returns a random boot id: 16 hex characters.
func NewBoot() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Agent runs one capture and publishes it.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	js    jetstream.JetStream
	Boot  string
	Stats Stats
	// Progress, when not nil (a terminal), gets a progress line while a
	// file is read.
	Progress io.Writer
	// Source, when not nil, is the capture Run reads (and closes), opened
	// by the caller with Config.Open, instead of opening it again: a pipe
	// (-pcap /dev/stdin) cannot be opened twice.
	Source capture.Source

	published prometheus.Counter
	pubErrors prometheus.Counter
	// batches (and their packet summaries) dropped on a full -buffer.max-mb
	bufDropped, bufDroppedPkts prometheus.Counter
	buffered                   atomic.Int64 // bytes of unacked PACKETS messages, sampled
	metricSeq                  uint64
	pub                        atomic.Pointer[publish.Publisher] // of the running capture
}

// DefaultBufferMB is -buffer.max-mb's default.
const DefaultBufferMB = 96

// BufferDropped is the number of batches, and of packet summaries in them,
// dropped so far because the publish buffer was full.
func (a *Agent) BufferDropped() (batches, packets uint64) {
	pub := a.pub.Load()
	if pub == nil {
		return 0, 0
	}
	return pub.Dropped()
}

// New returns an agent publishing to js, with its metrics registered in reg
// (nil for none).
func New(cfg Config, js jetstream.JetStream, reg prometheus.Registerer, log *slog.Logger) *Agent {
	a := &Agent{cfg: cfg, log: log, js: js, Boot: NewBoot()}
	a.published = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_agent_published_batches_total",
		Help: "PACKETS messages (batches and end-of-input markers) acked by JetStream."})
	a.pubErrors = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_agent_publish_errors_total",
		Help: "Failed publish attempts; each one is retried."})
	a.bufDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_agent_buffer_dropped_batches_total",
		Help: "PACKETS batches dropped because -buffer.max-mb of unacked messages was full (live capture only)."})
	a.bufDroppedPkts = prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_agent_buffer_dropped_packets_total",
		Help: "Packet summaries in the batches dropped on a full buffer."})
	if reg != nil {
		f := func(name, help string, v *atomic.Uint64) prometheus.Collector {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
				func() float64 { return float64(v.Load()) })
		}
		reg.MustRegister(a.published, a.pubErrors, a.bufDropped, a.bufDroppedPkts,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "netwatch_agent_buffer_bytes",
				Help: "Bytes of PACKETS messages not yet acked (queued or in flight), at the last metrics interval."},
				func() float64 { return float64(a.buffered.Load()) }),
			f("netwatch_agent_packets_total", "Frames read from the capture.", &a.Stats.Received),
			f("netwatch_agent_ip_packets_total", "Frames with a usable IP header.", &a.Stats.IPPackets),
			f("netwatch_agent_ip_bytes_total", "IP bytes of those frames (DESIGN.md accounting).", &a.Stats.IPBytes),
			f("netwatch_agent_non_ip_packets_total", "Frames without an IP header (ARP, ...).", &a.Stats.NonIP),
			f("netwatch_agent_malformed_packets_total", "Frames that failed to decode.", &a.Stats.Malformed),
			f("netwatch_agent_kernel_dropped_packets_total", "Frames dropped by the kernel (libpcap ps_drop).", &a.Stats.Dropped),
			f("netwatch_agent_interface_dropped_packets_total", "Frames dropped by the interface (libpcap ps_ifdrop).", &a.Stats.IfDropped),
			f("netwatch_agent_ring_packets_total", "Frames the kernel delivered to the AF_PACKET rings (PACKET_STATISTICS tp_packets).", &a.Stats.RingPackets),
			f("netwatch_agent_ring_dropped_packets_total", "Frames dropped on a full AF_PACKET ring (tp_drops).", &a.Stats.RingDrops),
			f("netwatch_agent_ring_queue_freezes_total", "Times an AF_PACKET TPACKET_V3 ring queue froze (tp_freeze_q_cnt).", &a.Stats.RingFreezes),
			f("netwatch_agent_arp_packets_total", "ARP/RARP frames summarized and published (Ethernet/IPv4; also in non_ip).", &a.Stats.ARP),
			f("netwatch_agent_truncated_packets_total", "IP frames cut by the snaplen inside their innermost IP header before both addresses, or inside a tunnel's inner frame before its IP length: in ip_packets and ip_bytes, not in a flow.", &a.Stats.Truncated),
		)
	}
	return a
}

// Open opens the configured capture file or live interface, checking that
// its link type can be decoded: an unreadable file, a missing interface, a
// bad BPF filter or an unsupported link type is an error here.
func (c *Config) Open() (capture.Source, error) {
	if c.PCAP != "" {
		return OpenFiles(c.PCAP)
	}
	filter, err := c.Filter()
	if err != nil {
		return nil, err
	}
	if c.CaptureMethod == "afpacket" {
		return capture.OpenAFPacket(capture.AFPacketConfig{Interface: c.Interface, Snaplen: c.Snaplen,
			Promisc: c.Promisc, BPF: filter, RingBytes: c.RingMB << 20, Fanout: c.Fanout}, decode.Supported)
	}
	return capture.OpenLive(capture.LiveConfig{Interface: c.Interface, Snaplen: c.Snaplen,
		Promisc: c.Promisc, BPF: filter}, decode.Supported)
}

// Run captures until the file ends, ctx ends (SIGINT/SIGTERM) or a read
// fails; then it flushes, sends end-of-input markers (files only), waits for
// every ack and publishes final metrics. A corrupt file's *capture.ReadError
// is returned after everything before it is published.
func (a *Agent) Run(ctx context.Context) error {
	file := a.cfg.PCAP != ""
	src := a.Source
	var err error
	if src == nil {
		if src, err = a.cfg.Open(); err != nil {
			return err
		}
	}
	if r, ok := src.(capture.Reader); ok && file {
		// file reading on its own core, ahead of decoding and publishing
		src = capture.ReadAhead(r)
		// SIGINT/SIGTERM while Next waits on a pipe (-pcap /dev/stdin, a
		// FIFO) whose writer sends nothing: interrupting the read-ahead
		// source ends that wait, and the loop ends as interrupted (what was
		// read is flushed and acked).
		if in, ok := src.(capture.Interrupter); ok {
			stopWatch := make(chan struct{})
			defer close(stopWatch)
			go func() {
				select {
				case <-ctx.Done():
					in.Interrupt()
				case <-stopWatch:
				}
			}()
		}
	}
	if !file {
		filter, _ := a.cfg.Filter()
		a.log.Info("capturing", "interface", a.cfg.Interface, "method", a.cfg.CaptureMethod, "fanout", a.cfg.Fanout,
			"bpf", filter, "link_type", src.LinkType().String())
	}
	defer src.Close()

	pub := publish.New(a.js, a.cfg.MaxInflight, a.log, publish.Metrics{Messages: a.published, Errors: a.pubErrors,
		DroppedMessages: a.bufDropped, DroppedPackets: a.bufDroppedPkts})
	defer pub.Close()
	// While NATS is slow or away unacked batches wait in memory, up to
	// -buffer.max-mb; beyond it a live capture drops batches (counted and
	// logged), a file waits.
	pub.MaxBytes = a.cfg.BufferMB << 20
	if pub.MaxBytes <= 0 {
		pub.MaxBytes = DefaultBufferMB << 20
	}
	pub.DropWhenFull = !file
	a.pub.Store(pub)
	batcher := publish.NewBatcher(pub, a.cfg.Sensor, a.Boot, a.cfg.BatchSize, a.cfg.BatchFlush)
	batcher.Full = a.cfg.SummaryFull
	// Live: in-band watermarks, so that the enricher ends idle flows by
	// packet time even while NATS holds batches back (publish.Watermarks).
	var wm *publish.Watermarks
	if !file && a.cfg.WatermarkInterval > 0 {
		loops := 1
		if par, ok := src.(capture.Parallel); ok && len(par.Members()) > 1 {
			loops = len(par.Members())
		}
		wm = publish.NewWatermarks(batcher, loops, a.cfg.WatermarkInterval, publish.DefaultWatermarkActive)
	}

	var metricsMu sync.Mutex
	mctx, stopMetrics := context.WithCancel(context.Background())
	var mwg sync.WaitGroup
	mwg.Add(1)
	go func() {
		defer mwg.Done()
		t := time.NewTicker(a.cfg.MetricsInterval)
		defer t.Stop()
		for {
			select {
			case <-mctx.Done():
				return
			case <-t.C:
				metricsMu.Lock()
				a.publishMetrics(mctx, src, pub)
				metricsMu.Unlock()
			}
		}
	}()

	stopMeter := func() {}
	if r, ok := src.(capture.Reader); ok && file {
		stopMeter = meter(a.Progress, r, &a.Stats.Received)
	}
	var readErr error
	if par, ok := src.(capture.Parallel); ok && len(par.Members()) > 1 {
		// one worker per fanout socket, each with its own decoders, fragment
		// table and open batches (the kernel sends every frame of a flow,
		// and every fragment of a datagram, to the same socket)
		members := par.Members()
		errs := make([]error, len(members))
		var wg sync.WaitGroup
		for i, m := range members {
			b := batcher
			if i > 0 {
				b = batcher.Fork()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = a.loop(ctx, m, b, wm, i)
				b.FlushAll()
			}()
		}
		wg.Wait()
		readErr = errors.Join(errs...)
	} else {
		readErr = a.loop(ctx, src, batcher, wm, 0)
	}

	stopMeter()
	if file {
		err = batcher.EndOfInput(context.Background())
	} else {
		batcher.FlushAll()
		err = pub.Wait(context.Background())
		if err == nil && wm != nil {
			// every batch is stored: a final watermark hands the sensor's
			// idle timeouts back to the enricher's wall clock at once
			wm.Final(time.Now())
			err = pub.Wait(context.Background())
		}
	}
	stopMetrics()
	mwg.Wait()
	a.publishMetrics(context.Background(), src, pub)
	dropped, droppedPkts := pub.Dropped()
	a.log.Info("capture done", "source", src.Name(), "packets", a.Stats.Received.Load(),
		"ip_packets", a.Stats.IPPackets.Load(), "non_ip", a.Stats.NonIP.Load(),
		"malformed", a.Stats.Malformed.Load(), "messages", pub.Acked(),
		"buffer_dropped_batches", dropped, "buffer_dropped_packets", droppedPkts)
	return errors.Join(readErr, err)
}

// loop reads src until it ends or ctx is done; it is capture loop li of
// the watermarks wm (nil for none).
func (a *Agent) loop(ctx context.Context, src capture.Source, batcher *publish.Batcher, wm *publish.Watermarks, li int) error {
	var decs Decoders
	frags := fragment.New()
	pacer := capture.Pacer{Speed: a.cfg.ReplaySpeed}
	st := &a.Stats
	emit := func(p *decode.Packet) { batcher.Add(p) }
	var p decode.Packet
	done := ctx.Done()
	var n uint
	// The counters are summed here and added to Stats every 64 frames and
	// at the end: one atomic add per counter instead of one per frame.
	var cnt localStats
	defer cnt.flush(st)
	if w, ok := src.(capture.Waiter); ok {
		// before Next waits (a slow pipe): exact counters, and batches sent
		// when -batch.flush old, as a live capture's read timeout does
		w.OnWait(func() {
			cnt.flush(st)
			batcher.Tick(time.Now())
		})
	}
	defer frags.Flush(emit)
	lastLink, dec := layers.LinkType(0), (*decode.Decoder)(nil)
	fs, _ := src.(capture.FrameSource)
	var fr capture.Frame
	var lastTs int64 // time of the newest frame read (p.TsNs is overwritten by a read that times out)
	for {
		n++
		if n&63 == 0 {
			cnt.flush(st)
			select {
			case <-done:
				return nil
			default:
			}
			if n&255 == 0 {
				now := time.Now()
				batcher.Tick(now)
				wm.Tick(li, batcher, now, lastTs, false)
			}
		}
		var (
			data []byte
			link layers.LinkType
			err  error
		)
		if fs != nil { // files: no gopacket.CaptureInfo to build and copy
			err = fs.NextFrame(&fr)
			data, link, p.TsNs, p.WireLen = fr.Data, fr.Link, fr.TsNs, uint32(fr.WireLen)
			if fr.NoTime {
				p.TsNs = lastTs
			}
		} else {
			var ci gopacket.CaptureInfo
			data, ci, link, err = src.Next()
			p.TsNs, p.WireLen = ci.Timestamp.UnixNano(), uint32(ci.Length)
			if ci.Timestamp.IsZero() {
				// a record without a timestamp (pcapng Simple Packet
				// Block): the newest earlier frame's time (0 before any)
				p.TsNs = lastTs
			}
		}
		if err == capture.ErrTimeout {
			cnt.flush(st)
			now := time.Now()
			frags.Expire(now.UnixNano(), emit) // a lone fragment on a quiet link
			batcher.Tick(now)
			wm.Tick(li, batcher, now, lastTs, true) // the capture was empty at now
			select {
			case <-done:
				return nil
			default:
			}
			continue
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted while waiting for a frame
			}
			a.log.Error("capture read failed", "err", err)
			return err
		}
		if pacer.Speed > 0 {
			pacer.Wait(time.Unix(0, p.TsNs), done)
			batcher.Tick(time.Now())
		}
		cnt.received++
		lastTs = max(lastTs, p.TsNs)
		if link != lastLink || dec == nil {
			lastLink, dec = link, decs.Get(link)
		}
		if dec != nil {
			dec.Decode(data, &p)
		} else {
			p.Kind, p.Reason = decode.KindMalformed, ReasonUnsupportedLink
		}
		switch p.Kind {
		case decode.KindIP:
			cnt.ip++
			cnt.ipBytes += uint64(p.IPBytes)
			if p.Fragment || frags.Pending() > 0 {
				frags.Process(&p, emit)
			} else {
				batcher.Add(&p)
			}
		case decode.KindTruncated:
			cnt.ip++
			cnt.ipBytes += uint64(p.IPBytes)
			st.Truncated.Add(1)
		case decode.KindNonIP:
			cnt.nonIP++
			if p.ARP.OK {
				st.ARP.Add(1)
				batcher.AddARP(&p)
			}
		default:
			cnt.malformed++
		}
	}
}

// localStats are counts of one capture loop not yet added to Stats.
type localStats struct {
	received, ip, ipBytes, nonIP, malformed uint64
}

func (c *localStats) flush(st *Stats) {
	if c.received != 0 {
		st.Received.Add(c.received)
	}
	if c.ip != 0 {
		st.IPPackets.Add(c.ip)
		st.IPBytes.Add(c.ipBytes)
	}
	if c.nonIP != 0 {
		st.NonIP.Add(c.nonIP)
	}
	if c.malformed != 0 {
		st.Malformed.Add(c.malformed)
	}
	*c = localStats{}
}

func (a *Agent) publishMetrics(ctx context.Context, src capture.Source, pub *publish.Publisher) {
	if d, ifd, ok := src.Stats(); ok {
		a.Stats.Dropped.Store(d)
		a.Stats.IfDropped.Store(ifd)
	}
	if rs, ok := src.(capture.RingStater); ok {
		p, d, f := rs.RingStats()
		a.Stats.RingPackets.Store(p)
		a.Stats.RingDrops.Store(d)
		a.Stats.RingFreezes.Store(f)
	}
	a.buffered.Store(int64(pub.Buffered()))
	m := a.sample(ctx)
	st := &a.Stats
	_, droppedPkts := pub.Dropped()
	m.Captures = []*pb.CaptureStats{{Source: src.Name(), Received: st.Received.Load(), Dropped: st.Dropped.Load(),
		IfDropped: st.IfDropped.Load(), IpPackets: st.IPPackets.Load(), NonIp: st.NonIP.Load(),
		Malformed: st.Malformed.Load(), PublishedBatches: pub.Acked(), IpBytes: st.IPBytes.Load(), Arp: st.ARP.Load(),
		RingPackets: st.RingPackets.Load(), RingFreezes: st.RingFreezes.Load(), BufferDropped: droppedPkts,
		Truncated: st.Truncated.Load()}}
	a.sendMetrics(ctx, context.Background(), m)
}

// sample returns the next METRICS message (sensor, boot, the next seq) with
// the host part sampled (hostmetrics.Sample, with -metrics.paths).
func (a *Agent) sample(ctx context.Context) *pb.Metrics {
	a.metricSeq++
	m := &pb.Metrics{Sensor: a.cfg.Sensor, Boot: a.Boot, Seq: a.metricSeq}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	hostmetrics.Sample(sctx, m, a.cfg.Paths())
	cancel()
	return m
}

// sendMetrics publishes m on METRICS with Nats-Msg-Id
// <sensor>.<boot>.metrics.<seq>, each attempt within 5 s under parent;
// it retries (up to 20 times, 100 ms to 2 s apart) until ctx ends.
func (a *Agent) sendMetrics(ctx, parent context.Context, m *pb.Metrics) {
	data, err := proto.Marshal(m)
	if err != nil {
		a.log.Error("marshal metrics", "err", err)
		return
	}
	id := a.cfg.Sensor + "." + a.Boot + ".metrics." + strconv.FormatUint(m.GetSeq(), 10)
	wait := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		pctx, cancel := context.WithTimeout(parent, 5*time.Second)
		_, err := a.js.Publish(pctx, schema.MetricsSubject(a.cfg.Sensor), data, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return
		}
		a.pubErrors.Inc()
		a.log.Warn("publish metrics failed", "err", err, "attempt", attempt)
		// periodic metrics give up when the agent stops; the final ones retry a while
		if ctx.Err() != nil || attempt >= 20 {
			return
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// RunMetrics is the agent of -metrics-only: it captures nothing and
// publishes a METRICS message at once and then every -metrics.interval
// until ctx ends (SIGINT/SIGTERM), the same message a capturing agent
// sends (subject netwatch.metrics.<sensor>, sensor, boot, seq, host part)
// with no capture statistics: Captures is empty, so the detector's
// capture-drop rule has nothing to compare, while its sensor-silent rule
// watches the messages as for any sensor. It returns nil on a clean stop.
func (a *Agent) RunMetrics(ctx context.Context) error {
	a.log.Info("publishing host metrics only", "sensor", a.cfg.Sensor, "interval", a.cfg.MetricsInterval,
		"paths", a.cfg.Paths())
	t := time.NewTicker(a.cfg.MetricsInterval)
	defer t.Stop()
	for {
		a.sendMetrics(ctx, ctx, a.sample(ctx))
		select {
		case <-ctx.Done():
			a.log.Info("metrics stopped", "messages", a.metricSeq)
			return nil
		case <-t.C:
		}
	}
}
