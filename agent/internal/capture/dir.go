package capture

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// LinkCheck returns an error naming a link type that cannot be decoded.
type LinkCheck func(layers.LinkType) error

// Reader is a file or directory Source that also reports its progress.
type Reader interface {
	Source
	// Progress returns the bytes read so far and the total, for a progress
	// meter; it may be called from any goroutine.
	Progress() (done, total int64)
}

// Open opens a capture file, or a directory whose capture files are read in
// name order as one input (Dir). check rejects a file whose (first
// interface's) link type cannot be decoded; the error names the file.
func Open(path string, check LinkCheck) (Reader, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open capture: %w", err)
	}
	if st.IsDir() {
		return OpenDir(path, check)
	}
	return openChecked(path, check)
}

func openChecked(path string, check LinkCheck) (*File, error) {
	f, err := OpenFile(path)
	if err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(f.LinkType()); err != nil {
			f.Close()
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
	}
	return f, nil
}

// Dir reads the capture files of a directory in name order as one stream of
// frames. A capture file is a regular file (or a symbolic link to one) whose
// name does not start with '.' and which is named like a capture (.pcap,
// .pcapng, .cap, .dmp, .gz) or starts with a pcap, pcapng or gzip magic
// number; other files (a README, checksums) are skipped (Skipped). A capture
// file that cannot be opened or read is an error naming it, returned after
// every frame of the files before it.
type Dir struct {
	path  string
	files []string
	sizes []int64
	check LinkCheck
	i     int   // index of cur in files
	cur   *File // the file being read
	prog  atomic.Pointer[File]
	done  atomic.Int64 // total size of the files before cur
	total int64
	err   error
	stop  <-chan struct{} // ReadAhead: each file is prefetched, until stop closes
	wait  func()          // ReadAhead: each file's Waiter hook

	skipped []string
}

// captureExt are the names taken as capture files whatever their content,
// so that a damaged capture is an error, not skipped.
var captureExt = []string{".pcap", ".pcapng", ".cap", ".dmp", ".pcap.gz", ".pcapng.gz", ".cap.gz", ".gz"}

// isCapture reports whether path is named like a capture file or starts
// with a pcap (either byte order, µs or ns), pcapng or gzip magic number.
func isCapture(path string) bool {
	low := strings.ToLower(path)
	for _, e := range captureExt {
		if strings.HasSuffix(low, e) {
			return true
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return true // let the open in order report it
	}
	defer f.Close()
	var m [4]byte
	if _, err := io.ReadFull(f, m[:]); err != nil {
		return false
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case 0xa1b2c3d4, 0xd4c3b2a1, 0xa1b23c4d, 0x4d3cb2a1, 0x0a0d0d0a:
		return true
	}
	return m[0] == 0x1f && m[1] == 0x8b
}

// Skipped lists the names of the files skipped as not captures (neither a
// capture name nor a capture magic number), such as a README.
func (d *Dir) Skipped() []string { return d.skipped }

// OpenDir lists dir and opens its first file. An empty directory is an error.
func OpenDir(dir string, check LinkCheck) (*Dir, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("open capture directory: %w", err)
	}
	d := &Dir{path: dir, check: check}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		info, err := os.Stat(filepath.Join(dir, e.Name())) // follows symbolic links
		if err != nil {
			return nil, fmt.Errorf("open capture directory: %w", err)
		}
		if !info.Mode().IsRegular() {
			// subdirectories are not read (no recursion) but named, like
			// other files that are not captures
			if info.IsDir() {
				d.skipped = append(d.skipped, e.Name()+"/")
			}
			continue
		}
		if !isCapture(filepath.Join(dir, e.Name())) {
			d.skipped = append(d.skipped, e.Name())
			continue
		}
		d.files = append(d.files, filepath.Join(dir, e.Name()))
		d.sizes = append(d.sizes, info.Size())
		d.total += info.Size()
	}
	sort.Strings(d.files) // os.ReadDir sorts too; the order is the contract
	if len(d.files) == 0 {
		return nil, fmt.Errorf("open capture directory %s: no files", dir)
	}
	if d.cur, err = openChecked(d.files[0], check); err != nil {
		return nil, err
	}
	d.prog.Store(d.cur)
	return d, nil
}

// Next implements Source: at the end of a file it goes on with the next one,
// and returns io.EOF after the last.
func (d *Dir) Next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	for {
		if d.err != nil {
			return nil, gopacket.CaptureInfo{}, 0, d.err
		}
		data, ci, link, err := d.cur.Next()
		if err != io.EOF {
			return data, ci, link, err
		}
		d.nextFile()
	}
}

// nextFile closes the file read to its end and opens the next one (d.err:
// io.EOF after the last, or the error of one that does not open).
func (d *Dir) nextFile() {
	d.cur.Close()
	d.prog.Store(nil)
	d.done.Add(d.sizes[d.i])
	d.i++
	if d.i == len(d.files) {
		d.err = io.EOF
		return
	}
	f, err := openChecked(d.files[d.i], d.check)
	if err != nil {
		d.err = err
		return
	}
	if d.stop != nil {
		f.prefetch(d.stop)
		f.onWait(d.wait)
	}
	d.cur = f
	d.prog.Store(f)
}

// prefetch reads the current file, and each next one, ahead (ReadAhead).
func (d *Dir) prefetch(stop <-chan struct{}) {
	d.stop = stop
	d.cur.prefetch(stop)
}

// NextFrame implements FrameSource: Next into f.
func (d *Dir) NextFrame(f *Frame) error {
	for {
		if d.err != nil {
			return d.err
		}
		err := d.cur.NextFrame(f)
		if err != io.EOF {
			return err
		}
		d.nextFile()
	}
}

// File is the path of the file being read.
func (d *Dir) File() string { return d.files[min(d.i, len(d.files)-1)] }

// Progress implements Reader.
func (d *Dir) Progress() (done, total int64) {
	done = d.done.Load()
	if cur := d.prog.Load(); cur != nil {
		n, _ := cur.Progress()
		done += n
	}
	return min(done, d.total), d.total
}

// LinkType implements Source: the link type of the file being read.
func (d *Dir) LinkType() layers.LinkType { return d.cur.LinkType() }

// Stats implements Source: a directory has none.
func (d *Dir) Stats() (uint64, uint64, bool) { return 0, 0, false }

// Name implements Source.
func (d *Dir) Name() string { return d.path }

// Close implements Source.
func (d *Dir) Close() error { return d.cur.Close() }
