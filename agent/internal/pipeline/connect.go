package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
)

// Inbox is the prefix of the agent's reply subjects: -nats.inbox-prefix,
// or "_INBOX_<sensor>" when it is empty. A sensor's credentials
// (netwatchctl creds -sensor, ctl/internal/perms.SensorInbox) allow
// subscribing to Inbox()+".>" only, so replies to other clients (on
// nats.go's default _INBOX.>) stay out of the sensor's reach.
func (c *Config) Inbox() string {
	if c.InboxPrefix != "" {
		return c.InboxPrefix
	}
	return "_INBOX_" + c.Sensor
}

// ConnectNATS connects as ops.Common.ConnectNATS does (retrying until ctx
// ends, reconnecting forever afterwards, credentials and TLS from the
// -nats.* flags) with the agent's own inbox prefix (Inbox, through
// nats.CustomInboxPrefix), which every publish ack, JetStream API reply
// and key-value reply of the agent then uses. It shadows the embedded
// ops.Common method because that one has no way to add a client option.
// name is the connection name the server shows.
func (c *Config) ConnectNATS(ctx context.Context, name string, log *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.CustomInboxPrefix(c.Inbox()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectBufSize(64 << 20),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "url", nc.ConnectedUrl()) }),
	}
	if c.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(c.NATSCreds))
	}
	if c.NATSCA != "" {
		opts = append(opts, nats.RootCAs(c.NATSCA))
	}
	if c.NATSCert != "" {
		opts = append(opts, nats.ClientCert(c.NATSCert, c.NATSKey))
	}
	nc, err := nats.Connect(c.NATSURL, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", c.NATSURL, err)
	}
	start := time.Now()
	nextLog := start.Add(2 * time.Second)
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("connect to nats %s: %w", c.NATSURL, ctx.Err())
		case now := <-time.After(100 * time.Millisecond):
			if now.After(nextLog) {
				log.Warn("waiting for nats", "url", c.NATSURL, "waited_s", int(now.Sub(start).Seconds()))
				nextLog = now.Add(10 * time.Second)
			}
		}
	}
	return nc, nil
}
