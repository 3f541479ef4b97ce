// Package capture is the first stage of the agent (capture → decode →
// fragment → publish): it reads frames from a pcap or pcapng file (pure Go,
// gopacket/pcapgo, tracking the byte offset of every record) or live from an
// interface through libpcap.
package capture

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// ErrTimeout is returned by a live Source's Next when no packet arrived
// within the read timeout; the caller may flush and call Next again.
var ErrTimeout = errors.New("capture read timeout")

// Source is a stream of captured frames.
type Source interface {
	// Next returns the next frame and its link type. data is valid until the
	// next call. At the end of a file it returns io.EOF; a corrupt or
	// truncated file gives a *ReadError.
	Next() (data []byte, ci gopacket.CaptureInfo, link layers.LinkType, err error)
	// LinkType is the link type of the capture (of a pcapng file's first interface).
	LinkType() layers.LinkType
	// Stats returns libpcap's counters of a live capture; ok is false for files.
	Stats() (dropped, ifDropped uint64, ok bool)
	// Name is the file path or interface name.
	Name() string
	Close() error
}

// ReadError is a failure to read a record of a capture file.
type ReadError struct {
	Path   string
	Packet uint64 // 1-based number of the record that failed, counted within Path
	Offset int64  // byte offset where that record starts: in the file, or in the decompressed data when Gzip
	Gzip   bool   // the file is gzip-compressed
	Err    error
}

func (e *ReadError) Error() string {
	where := "byte offset"
	if e.Gzip {
		where = "decompressed byte offset"
	}
	return fmt.Sprintf("read %s: packet %d at %s %d: %v", e.Path, e.Packet, where, e.Offset, e.Err)
}

func (e *ReadError) Unwrap() error { return e.Err }

// countingReader counts the bytes read through it. n is atomic so that a
// progress meter may read it while another goroutine reads the file.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

type packetReader interface {
	ZeroCopyReadPacketData() ([]byte, gopacket.CaptureInfo, error)
}

// File reads a pcap (µs or ns, either byte order) or pcapng file (several
// interfaces, each with its own link type and time resolution), plain or
// gzip-compressed.
type File struct {
	path string
	size int64 // file size in bytes (compressed size for gzip)
	f    *os.File
	raw  *countingReader // bytes read from the file
	cr   *countingReader // bytes handed to br (decompressed for gzip)
	br   *bufio.Reader
	gz   *gzip.Reader
	r    packetReader
	ng   bool
	link layers.LinkType
	n    uint64 // records read

	// pcapng: the first record, read at open so that the first interface's
	// link type is known there (pcapgo reads interface blocks lazily).
	first     []byte
	firstCI   gopacket.CaptureInfo
	firstErr  error
	firstOff  int64
	firstSeen bool
}

// OpenFile opens a capture file and reads its header. The format comes from
// the magic number, not the file name: gzip (1f 8b) is decompressed on the
// fly, then pcap or pcapng is read.
func OpenFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open capture: %w", err)
	}
	c := &File{path: path, f: f, raw: &countingReader{r: f}}
	if st, err := f.Stat(); err == nil {
		c.size = st.Size()
	}
	c.cr = c.raw
	// pcapgo wraps its input in bufio.NewReader, which returns this reader
	// unchanged, so counted minus buffered is the exact offset.
	c.br = bufio.NewReaderSize(c.cr, 1<<20)
	if m, err := c.br.Peek(2); err == nil && m[0] == 0x1f && m[1] == 0x8b {
		gz, err := gzip.NewReader(c.br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read %s: gzip header: %w", path, noEOF(err))
		}
		c.gz = gz
		c.cr = &countingReader{r: gz}
		c.br = bufio.NewReaderSize(c.cr, 1<<20)
	}
	magic, err := c.br.Peek(4)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("read %s: file header: %w", path, noEOF(err))
	}
	if binary.LittleEndian.Uint32(magic) == 0x0a0d0d0a {
		ng, err := pcapgo.NewNgReader(c.br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read %s: pcapng header: %w", path, noEOF(err))
		}
		c.r, c.ng = ng, true
		// Read the first record now: it brings the interface blocks before
		// it, so the link type checked at open is the first interface's.
		c.firstOff = c.Offset()
		data, ci, err := ng.ZeroCopyReadPacketData()
		c.first, c.firstCI, c.firstErr, c.firstSeen = append([]byte(nil), data...), ci, err, true
		if ng.NInterfaces() > 0 {
			if ifc, err := ng.Interface(0); err == nil {
				c.link = ifc.LinkType
			}
		}
	} else {
		r, err := pcapgo.NewReader(c.br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read %s: pcap header: %w", path, noEOF(err))
		}
		c.r, c.link = r, r.LinkType()
	}
	return c, nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Offset is the byte offset of the next unread record (for pcapng, of the
// next block).
// For a gzip file it is an offset in the decompressed data.
func (c *File) Offset() int64 { return c.cr.n.Load() - int64(c.br.Buffered()) }

// Progress returns the bytes of the file read so far (compressed bytes for
// gzip, read ahead by up to the buffer size) and the file's size. It may be
// called from any goroutine.
func (c *File) Progress() (done, total int64) { return min(c.raw.n.Load(), c.size), c.size }

// Next implements Source.
func (c *File) Next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	off := c.Offset()
	var data []byte
	var ci gopacket.CaptureInfo
	var err error
	if c.firstSeen {
		data, ci, err, off = c.first, c.firstCI, c.firstErr, c.firstOff
		c.first, c.firstSeen = nil, false
	} else {
		data, ci, err = c.r.ZeroCopyReadPacketData()
	}
	if err != nil {
		// pcapgo returns io.EOF only when a block or record header starts at
		// the end of the file (after any trailing statistics blocks); a cut
		// record is io.ErrUnexpectedEOF.
		if err == io.EOF {
			return nil, ci, 0, io.EOF
		}
		return nil, ci, 0, &ReadError{Path: c.path, Packet: c.n + 1, Offset: off, Gzip: c.gz != nil, Err: err}
	}
	c.n++
	link := c.link
	if c.ng && len(ci.AncillaryData) > 0 {
		if l, ok := ci.AncillaryData[0].(layers.LinkType); ok {
			link = l
		}
	}
	return data, ci, link, nil
}

// Packets is the number of records read so far.
func (c *File) Packets() uint64 { return c.n }

// LinkType implements Source.
func (c *File) LinkType() layers.LinkType { return c.link }

// Stats implements Source: a file has none.
func (c *File) Stats() (uint64, uint64, bool) { return 0, 0, false }

// Name implements Source.
func (c *File) Name() string { return c.path }

// Close implements Source.
func (c *File) Close() error { return c.f.Close() }

// Pacer sleeps so that frames are released at their recorded pace times
// speed (1 = recorded pace). The zero value with Speed 0 never sleeps.
type Pacer struct {
	Speed     float64
	first     time.Time
	firstWall time.Time
	started   bool
}

// Wait blocks until the frame recorded at ts is due, or done closes.
func (p *Pacer) Wait(ts time.Time, done <-chan struct{}) {
	if p.Speed <= 0 {
		return
	}
	if !p.started {
		p.first, p.firstWall, p.started = ts, time.Now(), true
		return
	}
	due := p.firstWall.Add(time.Duration(float64(ts.Sub(p.first)) / p.Speed))
	if d := time.Until(due); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-done:
		}
	}
}
