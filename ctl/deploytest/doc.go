// Package deploytest checks deploy/ and nats.conf (issue 8): every NATS
// configuration passes nats-server -t with throwaway TLS certificates, TLS
// and the static users are enforced by a real server, accounts.conf is what
// netwatchctl accounts-conf writes, and the docker-compose file and
// Kubernetes manifests parse and wire sensors and stages as documented. It
// has tests only.
package deploytest
