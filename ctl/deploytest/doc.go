// Package deploytest checks deploy/ and nats.conf (issue 8): every NATS
// configuration passes nats-server -t with throwaway TLS certificates, TLS
// and the static users are enforced by a real server, accounts.conf is what
// netwatchctl accounts-conf writes, the docker-compose file, Kubernetes
// manifests and systemd units parse and wire sensors and stages as
// documented (the enrichers as one consumer group with a stable member per
// replica), and a hub and a leaf site run from the deploy files buffer a
// WAN outage on the site and forward it once. It has tests only.
package deploytest
