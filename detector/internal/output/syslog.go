package output

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/leodido/go-syslog/v4/rfc5424"

	"netwatch/schema/pb"
)

// SyslogConfig configures a Syslog output.
type SyslogConfig struct {
	// Addr is "udp://host:port", "tcp://host:port" or "host:port" (UDP).
	Addr     string
	Hostname string // HOSTNAME field (empty: os.Hostname)
	AppName  string // APP-NAME field (empty: "netwatch-detector")
	Queue    int    // alerts waiting; beyond it Send drops (0: 1000)
	// Facility is the syslog facility (RFC 5424 table 1); 0 means 4,
	// security/authorization messages. Use 16-23 for local0-local7.
	Facility uint8
	Timeout  time.Duration // dial and write timeout (0: 5 s)
}

// SDID is the structured-data element of each message: the RFC 5424
// documentation enterprise number 32473 (RFC 5612), until netwatch has
// its own.
const SDID = "netwatch@32473"

// TimestampLayout is the TIMESTAMP of a message: RFC 3339 in UTC with at
// most 6 fraction digits (RFC 5424 6.2.3: TIME-SECFRAC is 1*6DIGIT; a
// 9-digit nanosecond fraction makes the builder drop the field, "-").
// Trailing zeros of the fraction are left out.
const TimestampLayout = "2006-01-02T15:04:05.999999Z07:00"

// Syslog writes alerts as RFC 5424 messages: PRI from the facility and the
// alert severity (critical 2, high 3 error, medium 4 warning, low 5 notice,
// info 6), TIMESTAMP the alert's packet time truncated to microseconds
// (TimestampLayout), MSGID the category, a
// structured-data element SDID with id, rule, technique, sensor, orig,
// resp, severity and update, and MSG the summary. Over UDP each message is
// one datagram (RFC 5426); over TCP messages are octet-counted (RFC 6587
// 3.4.1: "LEN SP MSG") and a broken connection is redialled with backoff.
// Messages are built with github.com/leodido/go-syslog's RFC 5424 builder.
type Syslog struct {
	cfg     SyslogConfig
	network string
	addr    string
	q       chan *pb.Alert
	m       *Metrics
	log     *slog.Logger
	mu      sync.RWMutex
	closed  bool
	done    chan struct{}
	ctx     context.Context
	stop    context.CancelFunc
	conn    net.Conn
}

// ParseSyslogAddr splits "udp://host:port", "tcp://host:port" or
// "host:port" into network and address.
func ParseSyslogAddr(s string) (network, addr string, err error) {
	network, addr = "udp", s
	if n, a, ok := strings.Cut(s, "://"); ok {
		network, addr = n, a
	}
	if network != "udp" && network != "tcp" {
		return "", "", fmt.Errorf("syslog address %q: network %q, want udp or tcp", s, network)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("syslog address %q: %w", s, err)
	}
	return network, addr, nil
}

// NewSyslog starts a syslog output; errors: an invalid address.
func NewSyslog(cfg SyslogConfig, m *Metrics, log *slog.Logger) (*Syslog, error) {
	network, addr, err := ParseSyslogAddr(cfg.Addr)
	if err != nil {
		return nil, err
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
	}
	if cfg.AppName == "" {
		cfg.AppName = "netwatch-detector"
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 1000
	}
	if cfg.Facility == 0 {
		cfg.Facility = 4
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Syslog{cfg: cfg, network: network, addr: addr, q: make(chan *pb.Alert, cfg.Queue), m: m, log: log,
		done: make(chan struct{}), ctx: ctx, stop: stop}
	go s.loop()
	return s, nil
}

// syslogSeverity maps an alert severity to a syslog severity (RFC 5424
// table 2).
func syslogSeverity(s pb.Severity) uint8 {
	switch s {
	case pb.Severity_SEVERITY_CRITICAL:
		return 2
	case pb.Severity_SEVERITY_HIGH:
		return 3
	case pb.Severity_SEVERITY_MEDIUM:
		return 4
	case pb.Severity_SEVERITY_LOW:
		return 5
	}
	return 6
}

// Format returns the RFC 5424 message of a (without transport framing).
func (s *Syslog) Format(a *pb.Alert) (string, error) {
	msg := &rfc5424.SyslogMessage{}
	msg.SetPriority(s.cfg.Facility*8 + syslogSeverity(a.GetSeverity()))
	msg.SetVersion(1)
	msg.SetTimestamp(time.Unix(0, a.GetTimeNs()).UTC().Truncate(time.Microsecond).Format(TimestampLayout))
	msg.SetHostname(s.cfg.Hostname)
	msg.SetAppname(s.cfg.AppName)
	msg.SetProcID(strconv.Itoa(os.Getpid()))
	msg.SetMsgID(a.GetCategory())
	doc := NewDocument(a)
	for _, p := range [][2]string{{"id", a.GetId()}, {"rule", a.GetRule()}, {"technique", a.GetTechnique()},
		{"sensor", a.GetSensor()}, {"orig", a.GetOrigAddr()}, {"resp", a.GetRespAddr()},
		{"severity", doc.Severity}, {"update", strconv.Itoa(doc.Update)}} {
		msg.SetParameter(SDID, p[0], p[1])
	}
	msg.SetMessage(a.GetSummary())
	return msg.String()
}

// Send queues a; false when the queue is full or the output is closed.
func (s *Syslog) Send(a *pb.Alert) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.m.Dropped.WithLabelValues("syslog").Inc()
		return false
	}
	select {
	case s.q <- a:
		return true
	default:
		s.m.Dropped.WithLabelValues("syslog").Inc()
		return false
	}
}

// Close stops intake, writes what is queued until ctx ends and closes the
// connection.
func (s *Syslog) Close(ctx context.Context) {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.q)
	}
	s.mu.Unlock()
	select {
	case <-s.done:
	case <-ctx.Done():
		s.stop()
		<-s.done
	}
}

func (s *Syslog) loop() {
	defer close(s.done)
	defer func() {
		if s.conn != nil {
			s.conn.Close()
		}
	}()
	for a := range s.q {
		if s.ctx.Err() != nil {
			s.m.Dropped.WithLabelValues("syslog").Inc()
			continue
		}
		line, err := s.Format(a)
		if err != nil {
			s.m.Dropped.WithLabelValues("syslog").Inc()
			s.log.Error("syslog: format alert", "alert_id", a.GetId(), "err", err)
			continue
		}
		s.write(a, line)
	}
}

// write sends one message, redialling with backoff (250 ms doubling to
// 10 s, 6 tries) when the connection fails.
func (s *Syslog) write(a *pb.Alert, line string) {
	frame := []byte(line)
	if s.network == "tcp" {
		frame = []byte(strconv.Itoa(len(line)) + " " + line)
	}
	wait := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := s.send(frame)
		if err == nil {
			s.m.Sent.WithLabelValues("syslog").Inc()
			return
		}
		if s.conn != nil {
			s.conn.Close()
			s.conn = nil
		}
		if attempt >= 6 {
			s.m.Dropped.WithLabelValues("syslog").Inc()
			s.log.Error("syslog: alert dropped", "alert_id", a.GetId(), "attempts", attempt, "err", err)
			return
		}
		s.m.Retries.WithLabelValues("syslog").Inc()
		select {
		case <-time.After(wait):
		case <-s.ctx.Done():
			s.m.Dropped.WithLabelValues("syslog").Inc()
			return
		}
		wait = min(2*wait, 10*time.Second)
	}
}

func (s *Syslog) send(frame []byte) error {
	if s.conn == nil {
		c, err := net.DialTimeout(s.network, s.addr, s.cfg.Timeout)
		if err != nil {
			return fmt.Errorf("syslog dial %s %s: %w", s.network, s.addr, err)
		}
		s.conn = c
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(s.cfg.Timeout))
	if _, err := s.conn.Write(frame); err != nil {
		return fmt.Errorf("syslog write: %w", err)
	}
	return nil
}
