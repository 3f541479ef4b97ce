package pipeline

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"netwatch/agent/internal/capture"
	"netwatch/agent/internal/decode"
	"netwatch/agent/internal/fragment"
	"netwatch/agent/internal/summary"
)

// checkLink rejects, at open, a capture whose link type the decoder cannot read.
func checkLink(l layers.LinkType) error {
	_, err := decode.New(l)
	return err
}

// OpenFiles opens a capture file (pcap or pcapng, plain or gzip) or a
// directory of them read in name order; an unsupported link type is an error
// naming the file.
func OpenFiles(path string) (capture.Reader, error) { return capture.Open(path, checkLink) }

// meter starts a progress meter of src on w, or does nothing when w is nil.
func meter(w io.Writer, src capture.Reader, packets *atomic.Uint64) (stop func()) {
	if w == nil {
		return func() {}
	}
	return capture.NewMeter(w, src, packets.Load, time.Now()).Run(500 * time.Millisecond)
}

// Summarize reads a capture file, or a directory of them, without a broker
// into a report. A read error is returned and also recorded in the report,
// which then holds every packet before it. progress, when not nil (a
// terminal), gets a progress line.
func Summarize(path string, progress io.Writer) (*summary.Report, error) {
	return SummarizeContext(context.Background(), path, progress)
}

// ErrInterrupted is SummarizeContext's error when ctx ended first.
var ErrInterrupted = errors.New("interrupted: the counts cover the frames read until then")

// SummarizeContext is Summarize until ctx ends (SIGINT, SIGTERM): then the
// file is closed (which also ends a read blocked on a pipe) and the report
// of the frames read so far is returned, marked Interrupted, with
// ErrInterrupted.
func SummarizeContext(ctx context.Context, path string, progress io.Writer) (*summary.Report, error) {
	r := summary.New(path)
	opened, err := OpenFiles(path)
	if err != nil {
		r.Error = err.Error()
		return r, err
	}
	// read ahead on another core, as Run does; Interrupt ends a read
	// that waits on a pipe
	src := capture.ReadAhead(opened)
	defer src.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			if in, ok := src.(capture.Interrupter); ok {
				in.Interrupt()
			} else {
				src.Close()
			}
		case <-done:
		}
	}()
	d, _ := opened.(*capture.Dir)
	if d != nil {
		r.SkippedFiles = d.Skipped()
	}
	var n atomic.Uint64
	stop := meter(progress, src, &n)
	defer stop()
	var decs Decoders
	var p decode.Packet
	var l7 decode.L7
	fs, _ := src.(capture.FrameSource)
	var fr capture.Frame
	var lastTs int64 // newest frame time so far: the time of a frame without one
	for {
		if fs != nil {
			err = fs.NextFrame(&fr)
		} else {
			var ci gopacket.CaptureInfo
			fr.Data, ci, fr.Link, err = src.Next()
			fr.TsNs, fr.NoTime, fr.WireLen = capture.TsNs(ci.Timestamp), ci.Timestamp.IsZero(), ci.Length
		}
		if err == io.EOF {
			break
		}
		if err == nil && ctx.Err() != nil {
			err = ErrInterrupted
		}
		if err != nil && ctx.Err() != nil {
			r.Error, r.Interrupted = ErrInterrupted.Error(), true
			r.Finish()
			return r, ErrInterrupted
		}
		if err != nil {
			r.Error = err.Error()
			var re *capture.ReadError
			if errors.As(err, &re) {
				r.ErrorFile, r.ErrorPacket, r.ErrorOffset = re.Path, re.Packet, re.Offset
			} else if d != nil {
				r.ErrorFile = d.File() // a later file that does not open
			}
			r.Finish()
			return r, err
		}
		n.Add(1)
		p.TsNs, p.WireLen = fr.TsNs, uint32(fr.WireLen)
		if fr.NoTime {
			p.TsNs = lastTs // as the agent publishes it
		} else {
			lastTs = max(lastTs, p.TsNs)
		}
		if dec := decs.Get(fr.Link); dec != nil {
			dec.Decode(fr.Data, &p)
		} else {
			p = decode.Packet{TsNs: p.TsNs, Kind: decode.KindMalformed, Reason: ReasonUnsupportedLink}
		}
		if fr.NoTime {
			r.AddUntimed(fr.Link, fr.WireLen, &p, &l7)
		} else {
			r.Add(fr.Link, fr.WireLen, &p, &l7)
		}
	}
	r.Finish()
	return r, nil
}

// ReadFile runs capture → decode → fragment over a capture file (or a
// directory of them) without a broker, passing every IP packet (with its
// first fragment's ports) to emit, and returns the capture counters. It is
// the decode path of Run.
func ReadFile(path string, emit func(*decode.Packet)) (*Stats, error) {
	src, err := OpenFiles(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	frags := fragment.New()
	var decs Decoders
	var p decode.Packet
	defer frags.Flush(emit)
	for {
		data, ci, link, err := src.Next()
		if err == io.EOF {
			return &a.Stats, nil
		}
		if err != nil {
			return &a.Stats, err
		}
		a.Stats.Received.Add(1)
		p.TsNs, p.WireLen = capture.TsNs(ci.Timestamp), uint32(ci.Length)
		if dec := decs.Get(link); dec != nil {
			dec.Decode(data, &p)
		} else {
			p.Kind = decode.KindMalformed
		}
		switch p.Kind {
		case decode.KindIP:
			a.Stats.IPPackets.Add(1)
			a.Stats.IPBytes.Add(uint64(p.IPBytes))
			frags.Process(&p, emit)
		case decode.KindTruncated:
			a.Stats.IPPackets.Add(1)
			a.Stats.IPBytes.Add(uint64(p.IPBytes))
			a.Stats.Truncated.Add(1)
		case decode.KindNonIP:
			a.Stats.NonIP.Add(1)
			if p.ARP.OK {
				a.Stats.ARP.Add(1)
			}
		default:
			a.Stats.Malformed.Add(1)
		}
	}
}
