package testkit

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"netwatch/schema"
)

func TestJetStreamHasStreams(t *testing.T) {
	_, _, js := JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, name := range []string{schema.StreamPackets, schema.StreamFlows, schema.StreamAlerts, schema.StreamMetrics} {
		if _, err := js.Stream(ctx, name); err != nil {
			t.Errorf("stream %s: %v", name, err)
		}
	}
	// Provisioning twice is idempotent.
	if err := schema.Provision(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatalf("second provision: %v", err)
	}
}

func TestPostgresFreshSchema(t *testing.T) {
	dsn := Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("fresh schema has %d tables", n)
	}
}
