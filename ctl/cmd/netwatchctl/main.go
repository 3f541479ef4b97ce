// Command netwatchctl is the operator's tool for a netwatch fleet (issue 8):
// it issues NATS credentials for sensors and stages and provisions the
// JetStream streams, consumers and the sensor registry.
//
//	netwatchctl init      -dir DIR [-operator NAME]
//	netwatchctl creds     -dir DIR -sensor NAME [-o FILE] [-ttl DURATION]
//	netwatchctl creds     -dir DIR -role enricher|detector|sink|api|admin [-name NAME] [-o FILE]
//	netwatchctl provision [-nats.url URLS] [-nats.creds FILE] [-replicas N]
//	netwatchctl accounts-conf -sensors NAME,NAME... [-o FILE]
//
// Flags can also come from NETWATCH_* environment variables (flag wins).
// Exit status: 0 on success, 1 on an error, 2 on bad usage.
package main

import (
	"os"

	"netwatch/ctl/internal/cli"
)

func main() { os.Exit(cli.Run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr)) }
