package deploytest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"netwatch/ctl/internal/perms"
	"netwatch/testkit"
)

// The parts of Kubernetes objects the checks read (apps/v1, batch/v1, v1).
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Replicas            *int   `yaml:"replicas"`
		ServiceName         string `yaml:"serviceName"`
		PodManagementPolicy string `yaml:"podManagementPolicy"`
		ClusterIP           string `yaml:"clusterIP"`
		Template            struct {
			Spec podSpec `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type podSpec struct {
	HostNetwork    bool        `yaml:"hostNetwork"`
	DNSPolicy      string      `yaml:"dnsPolicy"`
	InitContainers []container `yaml:"initContainers"`
	Containers     []container `yaml:"containers"`
	Volumes        []struct {
		Name     string    `yaml:"name"`
		EmptyDir *struct{} `yaml:"emptyDir"`
		Secret   *struct {
			SecretName string `yaml:"secretName"`
			Items      []struct{ Key, Path string }
		} `yaml:"secret"`
	} `yaml:"volumes"`
}

type container struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
			SecretKeyRef *struct{ Name, Key string } `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	SecurityContext struct {
		Capabilities struct {
			Add []string `yaml:"add"`
		} `yaml:"capabilities"`
	} `yaml:"securityContext"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
	} `yaml:"volumeMounts"`
}

func (c container) env(name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

func loadK8s(t *testing.T) []k8sObject {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testkit.Root(t), "deploy", "k8s", "netwatch.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var objs []k8sObject
	for {
		var o k8sObject
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("deploy/k8s/netwatch.yaml document %d: %v", len(objs)+1, err)
		}
		objs = append(objs, o)
	}
	return objs
}

func find(t *testing.T, objs []k8sObject, kind, name string) k8sObject {
	t.Helper()
	for _, o := range objs {
		if o.Kind == kind && o.Metadata.Name == name {
			return o
		}
	}
	t.Fatalf("no %s %s in deploy/k8s/netwatch.yaml", kind, name)
	return k8sObject{}
}

func configMap(t *testing.T, objs []k8sObject, name string) map[string]string {
	return find(t, objs, "ConfigMap", name).Data
}

// mountedFile reports whether path is a file of a secret volume mounted in c.
func mountedFile(p podSpec, c container, path string) bool {
	for _, m := range c.VolumeMounts {
		if filepath.Dir(path) != m.MountPath {
			continue
		}
		for _, v := range p.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			if len(v.Secret.Items) == 0 {
				return true // every key of the secret
			}
			for _, it := range v.Secret.Items {
				if it.Path == filepath.Base(path) {
					return true
				}
			}
		}
	}
	return false
}

// TestKubernetesManifests checks deploy/k8s/netwatch.yaml as issue 8 asks:
// sensors as a DaemonSet on the host network, named after their node, with
// their own credentials file and no provisioning; stages with 2 replicas
// (the enrichers and detectors StatefulSets of consumer-group members, checkK8sGroup;
// the others Deployments sharing their durables), each with its own
// credentials; a 3-node NATS
// StatefulSet whose routes name its three pods; the provision Job at 3
// replicas; everything in namespace netwatch.
func TestKubernetesManifests(t *testing.T) {
	objs := loadK8s(t)
	for _, o := range objs {
		if o.Kind != "Namespace" && o.Metadata.Namespace != "netwatch" {
			t.Errorf("%s %s in namespace %q", o.Kind, o.Metadata.Name, o.Metadata.Namespace)
		}
	}
	ds := find(t, objs, "DaemonSet", "agent")
	p := ds.Spec.Template.Spec
	if !p.HostNetwork || p.DNSPolicy != "ClusterFirstWithHostNet" {
		t.Errorf("agent DaemonSet: hostNetwork %v dnsPolicy %q, want true and ClusterFirstWithHostNet", p.HostNetwork, p.DNSPolicy)
	}
	a := p.Containers[0]
	if !slices.Contains(a.SecurityContext.Capabilities.Add, "NET_RAW") {
		t.Errorf("agent capabilities %v lack NET_RAW", a.SecurityContext.Capabilities.Add)
	}
	if !slices.Contains(a.Args, "-nats.provision=false") || !slices.Contains(a.Args, "-interface") {
		t.Errorf("agent args %v: want -interface and -nats.provision=false", a.Args)
	}
	// $(NODE_NAME) expands only if NODE_NAME is defined earlier in the list.
	if len(a.Env) == 0 || a.Env[0].Name != "NODE_NAME" || a.Env[0].ValueFrom == nil || a.Env[0].ValueFrom.FieldRef == nil ||
		a.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("agent: first env must be NODE_NAME from spec.nodeName")
	}
	if v, _ := a.env("NETWATCH_SENSOR"); v != "$(NODE_NAME)" {
		t.Errorf("agent NETWATCH_SENSOR = %q, want $(NODE_NAME)", v)
	}
	creds, _ := a.env("NETWATCH_NATS_CREDS")
	if creds != "/etc/netwatch/creds/$(NODE_NAME).creds" {
		t.Errorf("agent NETWATCH_NATS_CREDS %q is not its own node's file", creds)
	}
	checkAgentOwnCreds(t, p, a, creds)

	for _, stage := range []string{"enricher", "detector", "sink", "api"} {
		kind := "Deployment"
		if stage == "enricher" || stage == "detector" {
			kind = "StatefulSet" // stable pod names = consumer group members
		}
		d := find(t, objs, kind, stage)
		if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
			t.Errorf("Deployment %s: replicas %v, want >= 2", stage, d.Spec.Replicas)
		}
		ps := d.Spec.Template.Spec
		c := ps.Containers[0]
		if c.Command[0] != "/opt/netwatch/bin/"+stage {
			t.Errorf("%s runs %v", stage, c.Command)
		}
		if ps.HostNetwork {
			t.Errorf("%s on the host network", stage)
		}
		cr, _ := c.env("NETWATCH_NATS_CREDS")
		if cr != "/etc/netwatch/creds/"+stage+".creds" || !mountedFile(ps, c, cr) {
			t.Errorf("%s: NETWATCH_NATS_CREDS %q not its own mounted credentials", stage, cr)
		}
		if u, _ := c.env("NETWATCH_NATS_URL"); u != "nats://nats-client.netwatch.svc:4222" {
			t.Errorf("%s: NETWATCH_NATS_URL %q", stage, u)
		}
		// the role's user may not create streams or durables: the Job does
		if stage != "api" && !slices.Contains(c.Args, "-nats.provision=false") {
			t.Errorf("%s args %v: want -nats.provision=false (its user may not provision)", stage, c.Args)
		}
	}
	for stage, flag := range map[string]string{"enricher": "-nats.replicas", "detector": "-stream.replicas"} {
		kind := map[string]string{"enricher": "StatefulSet", "detector": "StatefulSet"}[stage]
		if kind == "" {
			kind = "Deployment"
		}
		args := find(t, objs, kind, stage).Spec.Template.Spec.Containers[0].Args
		if i := slices.Index(args, flag); i < 0 || i+1 >= len(args) || args[i+1] != "3" {
			t.Errorf("%s args %v: want %s 3", stage, args, flag)
		}
	}

	checkK8sGroup(t, objs, "enricher", perms.EnricherGroup, true)
	checkK8sGroup(t, objs, "detector", perms.DetectorGroup, false)

	sts := find(t, objs, "StatefulSet", "nats")
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 3 {
		t.Errorf("nats StatefulSet replicas %v, want 3", sts.Spec.Replicas)
	}
	conf := configMap(t, objs, "nats-config")["nats.conf"]
	for i := range 3 {
		route := "nats-route://nats-" + string(rune('0'+i)) + ".nats.netwatch.svc:6222"
		if !strings.Contains(conf, route) {
			t.Errorf("nats.conf lacks route %s", route)
		}
	}
	job := find(t, objs, "Job", "netwatch-provision").Spec.Template.Spec.Containers[0].Command
	if !slices.Contains(job, "provision") || job[slices.Index(job, "-replicas")+1] != "3" {
		t.Errorf("provision Job runs %v, want netwatchctl provision -replicas 3", job)
	}
	find(t, objs, "Service", "nats")
	find(t, objs, "Service", "api")
}

// composeFile is the part of the Compose specification the checks read.
type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		NetworkMode string            `yaml:"network_mode"`
		Ports       []string          `yaml:"ports"`
		CapAdd      []string          `yaml:"cap_add"`
		Deploy      struct {
			Replicas int `yaml:"replicas"`
		} `yaml:"deploy"`
	} `yaml:"services"`
}

// TestComposeFile checks deploy/compose/docker-compose.yml: three NATS
// nodes with their own configuration and volume, every stage twice with its
// (the enrichers and detectors as two named group members each, checkComposeGroup)
// own credentials file mounted where NETWATCH_NATS_CREDS says and all three
// nodes in NETWATCH_NATS_URL, the sensor on the host network with raw
// sockets and no provisioning, provisioning at 3 replicas.
func TestComposeFile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(testkit.Root(t), "deploy", "compose", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for i := 1; i <= 3; i++ {
		n := "nats-" + string(rune('0'+i))
		s, ok := f.Services[n]
		if !ok {
			t.Fatalf("no service %s", n)
		}
		conf := "/etc/netwatch/" + n + ".conf"
		if !slices.Contains(s.Command, conf) {
			t.Errorf("%s runs %v, want -c %s", n, s.Command, conf)
		}
		if _, err := os.Stat(filepath.Join(testkit.Root(t), "deploy", "compose", "nats", n+".conf")); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	mounted := composeMounted
	checkComposeGroup(t, f, "enricher", perms.EnricherGroup, true)
	checkComposeGroup(t, f, "detector", perms.DetectorGroup, false)
	for _, stage := range []string{"sink", "api"} {
		s, ok := f.Services[stage]
		if !ok {
			t.Errorf("no service %s", stage)
			continue
		}
		if s.Deploy.Replicas < 2 {
			t.Errorf("%s: deploy.replicas %d, want >= 2", stage, s.Deploy.Replicas)
		}
		cr := s.Environment["NETWATCH_NATS_CREDS"]
		if cr != "/etc/netwatch/creds/"+stage+".creds" || !mounted(s.Volumes, cr) {
			t.Errorf("%s: NETWATCH_NATS_CREDS %q not its own mounted file (volumes %v)", stage, cr, s.Volumes)
		}
		u := s.Environment["NETWATCH_NATS_URL"]
		for i := 1; i <= 3; i++ {
			if !strings.Contains(u, "nats://nats-"+string(rune('0'+i))+":4222") {
				t.Errorf("%s: NETWATCH_NATS_URL %q lacks nats-%d", stage, u, i)
			}
		}
	}
	for name, sv := range f.Services {
		if len(sv.Command) > 0 && slices.Contains([]string{"/opt/netwatch/bin/enricher", "/opt/netwatch/bin/detector",
			"/opt/netwatch/bin/sink"}, sv.Command[0]) && !slices.Contains(sv.Command, "-nats.provision=false") {
			t.Errorf("%s: command %v, want -nats.provision=false (its user may not provision)", name, sv.Command)
		}
	}
	// A replicated service publishing one fixed host port: only one replica
	// could bind it (QA of issue 8: the api's two replicas on 8080).
	for name, sv := range f.Services {
		for _, pt := range sv.Ports {
			host, _, _ := strings.Cut(pt, ":")
			if sv.Deploy.Replicas > 1 && !strings.Contains(host, "-") {
				t.Errorf("%s: %d replicas publish the single host port %q", name, sv.Deploy.Replicas, pt)
			}
		}
	}
	// The sensor fails over between the three nodes' published ports.
	var published []string
	for i := 1; i <= 3; i++ {
		for _, pt := range f.Services[fmt.Sprintf("nats-%d", i)].Ports {
			if host, cont, _ := strings.Cut(pt, ":"); cont == "4222" {
				published = append(published, "127.0.0.1:"+host)
			}
		}
	}
	if agURL := f.Services["agent"].Environment["NETWATCH_NATS_URL"]; len(published) != 3 {
		t.Errorf("NATS client ports published for the agent: %v, want one per node", published)
	} else {
		for _, hp := range published {
			if !strings.Contains(agURL, hp) {
				t.Errorf("agent NETWATCH_NATS_URL %q lacks %s", agURL, hp)
			}
		}
	}
	ag := f.Services["agent"]
	if ag.NetworkMode != "host" || !slices.Contains(ag.CapAdd, "NET_RAW") || !slices.Contains(ag.Command, "-nats.provision=false") {
		t.Errorf("agent: network_mode %q cap_add %v command %v", ag.NetworkMode, ag.CapAdd, ag.Command)
	}
	if cr := ag.Environment["NETWATCH_NATS_CREDS"]; !mounted(ag.Volumes, cr) {
		t.Errorf("agent credentials %q not mounted", cr)
	}
	pr := f.Services["provision"].Command
	if i := slices.Index(pr, "-replicas"); i < 0 || pr[i+1] != "3" {
		t.Errorf("provision runs %v, want -replicas 3", pr)
	}
}

// checkK8sGroup checks that a stage's instances form consumer group
// members with a distinct, stable member each (enricher/README.md and
// detector/README.md "Scaling": two instances on the one durable would
// split flows, or an originator's flows): a StatefulSet (pods <name>-0,
// <name>-1, ... keep their names across restarts and rescheduling)
// governed by a headless Service, every pod in group (the one the role's
// permissions are written for) with -consume.member (and, with instance,
// -instance) set from its own pod name through the downward API, defined
// before use, and nothing on the command line overriding them; the sink is
// a plain Deployment with no per-pod identity (its replicas share its
// durables).
func checkK8sGroup(t *testing.T, objs []k8sObject, stage, group string, instance bool) {
	t.Helper()
	for _, o := range objs {
		if o.Kind == "Deployment" && o.Metadata.Name == stage {
			t.Errorf("%s is a Deployment: its pods' names are random, so they cannot be stable group members", stage)
		}
	}
	sts := find(t, objs, "StatefulSet", stage)
	if sts.Spec.ServiceName == "" {
		t.Errorf("%s StatefulSet without serviceName", stage)
	} else if svc := find(t, objs, "Service", sts.Spec.ServiceName); svc.Spec.ClusterIP != "None" {
		t.Errorf("Service %s governing the %ss is not headless (clusterIP %q)", sts.Spec.ServiceName, stage, svc.Spec.ClusterIP)
	}
	c := sts.Spec.Template.Spec.Containers[0]
	pos := map[string]int{}
	for i, e := range c.Env {
		pos[e.Name] = i
	}
	pod, ok := pos["POD_NAME"]
	if !ok || c.Env[pod].ValueFrom == nil || c.Env[pod].ValueFrom.FieldRef == nil || c.Env[pod].ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Fatalf("%s: no POD_NAME from metadata.name", stage)
	}
	if g, _ := c.env("NETWATCH_CONSUME_GROUP"); g != group {
		t.Errorf("%s NETWATCH_CONSUME_GROUP = %q, want %q (the group the %s role's permissions are written for)", stage, g, group, stage)
	}
	vars := []string{"NETWATCH_CONSUME_MEMBER"}
	if instance {
		vars = append(vars, "NETWATCH_INSTANCE")
	}
	for _, v := range vars {
		if val, _ := c.env(v); val != "$(POD_NAME)" || pos[v] < pod {
			t.Errorf("%s %s = %q at env %d, want $(POD_NAME) after POD_NAME (env %d)", stage, v, val, pos[v], pod)
		}
	}
	for _, a := range c.Args {
		if strings.HasPrefix(a, "-consume.") || strings.HasPrefix(a, "--consume.") || a == "-instance" {
			t.Errorf("%s args %v override the group settings of the environment", stage, c.Args)
		}
	}
	// The members the StatefulSet runs: one per ordinal, all distinct.
	members := map[string]bool{}
	for i := range *sts.Spec.Replicas {
		members[fmt.Sprintf("%s-%d", sts.Metadata.Name, i)] = true
	}
	if len(members) < 2 {
		t.Errorf("%s members %v, want >= 2", stage, members)
	}
	d := find(t, objs, "Deployment", "sink")
	for _, e := range d.Spec.Template.Spec.Containers[0].Env {
		if strings.HasPrefix(e.Name, "NETWATCH_CONSUME_") || (e.ValueFrom != nil && e.ValueFrom.FieldRef != nil) {
			t.Errorf("sink env %s: replicas must share the stage's durables, with no per-pod setting", e.Name)
		}
	}
}

// checkComposeGroup checks the compose file's services of a stage run as
// consumer-group members: one service per member (replicas of one service
// would all carry the same member name: hot standbys, not capacity), at
// least two, each with its own literal NETWATCH_CONSUME_MEMBER (and, with
// instance, NETWATCH_INSTANCE equal to it; no variable that could differ
// between restarts), all in group; no service named after the stage with
// replicas; sink replicas without any consumer setting (they share their
// durables).
func checkComposeGroup(t *testing.T, f composeFile, stage, group string, instance bool) {
	t.Helper()
	members := map[string]string{}
	for name, s := range f.Services {
		if len(s.Command) == 0 || !strings.HasSuffix(s.Command[0], "/"+stage) {
			continue
		}
		if s.Deploy.Replicas > 1 {
			t.Errorf("%s: deploy.replicas %d: replicas of one service share one member name", name, s.Deploy.Replicas)
		}
		if g := s.Environment["NETWATCH_CONSUME_GROUP"]; g != group {
			t.Errorf("%s: NETWATCH_CONSUME_GROUP %q, want %q", name, g, group)
		}
		m := s.Environment["NETWATCH_CONSUME_MEMBER"]
		if m == "" || strings.Contains(m, "$") {
			t.Errorf("%s: NETWATCH_CONSUME_MEMBER %q, want a literal member name", name, m)
		} else if other, dup := members[m]; dup {
			t.Errorf("%s and %s are both member %s", name, other, m)
		}
		members[m] = name
		if in := s.Environment["NETWATCH_INSTANCE"]; instance && in != m {
			t.Errorf("%s: NETWATCH_INSTANCE %q, want the member name %q (COUNTERS ids)", name, in, m)
		}
		for _, a := range s.Command {
			if strings.HasPrefix(a, "-consume.") || a == "-instance" {
				t.Errorf("%s: command %v overrides the group settings", name, s.Command)
			}
		}
		cr := s.Environment["NETWATCH_NATS_CREDS"]
		if cr != "/etc/netwatch/creds/"+stage+".creds" || !composeMounted(s.Volumes, cr) {
			t.Errorf("%s: NETWATCH_NATS_CREDS %q not the %s's mounted credentials", name, cr, stage)
		}
		u := s.Environment["NETWATCH_NATS_URL"]
		for i := 1; i <= 3; i++ {
			if !strings.Contains(u, "nats://nats-"+string(rune('0'+i))+":4222") {
				t.Errorf("%s: NETWATCH_NATS_URL %q lacks nats-%d", name, u, i)
			}
		}
	}
	if len(members) < 2 {
		t.Errorf("%s members %v, want >= 2", stage, members)
	}
	t.Logf("compose %ss: %v", stage, members)
	for k := range f.Services["sink"].Environment {
		if strings.HasPrefix(k, "NETWATCH_CONSUME_") {
			t.Errorf("sink: %s: replicas must share the stage's durables", k)
		}
	}
}

func composeMounted(vols []string, path string) bool {
	for _, v := range vols {
		if parts := strings.Split(v, ":"); len(parts) >= 2 && parts[1] == path {
			return true
		}
	}
	return false
}

// TestSystemdEnricherIsAGroupMember checks the enricher's systemd unit: a
// member of group perms.EnricherGroup named after the host (%l, the short
// host name: a member name is one subject token; stable across restarts), open flows left to the checkpoints on a stop
// (-shutdown.flush=false), and enricher.env read after those lines so that
// it can override them (systemd: EnvironmentFile= wins over Environment=).
func TestSystemdEnricherIsAGroupMember(t *testing.T) {
	root := testkit.Root(t)
	// every stage's user may not provision: its unit must not try
	for _, stage := range []string{"enricher", "detector", "sink"} {
		data, err := os.ReadFile(filepath.Join(root, "deploy", "systemd", "netwatch-"+stage+".service"))
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`(?m)^ExecStart=\S+/` + stage + ` .*-nats\.provision=false`).Match(data) {
			t.Errorf("netwatch-%s.service: ExecStart without -nats.provision=false", stage)
		}
	}
	data, err := os.ReadFile(filepath.Join(testkit.Root(t), "deploy", "systemd", "netwatch-enricher.service"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	envFile := false
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if v, ok := strings.CutPrefix(l, "Environment="); ok {
			k, val, _ := strings.Cut(v, "=")
			env[k] = val
		}
		envFile = envFile || strings.HasPrefix(l, "EnvironmentFile=")
	}
	want := map[string]string{"NETWATCH_CONSUME_GROUP": perms.EnricherGroup, "NETWATCH_CONSUME_MEMBER": "%l", "NETWATCH_INSTANCE": "%l", "NETWATCH_SHUTDOWN_FLUSH": "false"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("netwatch-enricher.service: Environment=%s=%q, want %q", k, env[k], v)
		}
	}
	if !envFile {
		t.Error("netwatch-enricher.service reads no EnvironmentFile")
	}
	// the detector: a member of the detectors' groups named after the host
	data, err = os.ReadFile(filepath.Join(testkit.Root(t), "deploy", "systemd", "netwatch-detector.service"))
	if err != nil {
		t.Fatal(err)
	}
	env = map[string]string{}
	envAfter := false
	for _, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if v, ok := strings.CutPrefix(l, "Environment="); ok {
			k, val, _ := strings.Cut(v, "=")
			env[k] = val
			envAfter = false
		}
		if strings.HasPrefix(l, "EnvironmentFile=") {
			envAfter = true
		}
	}
	for k, v := range map[string]string{"NETWATCH_CONSUME_GROUP": perms.DetectorGroup, "NETWATCH_CONSUME_MEMBER": "%l"} {
		if env[k] != v {
			t.Errorf("netwatch-detector.service: Environment=%s=%q, want %q", k, env[k], v)
		}
	}
	if !envAfter {
		t.Error("netwatch-detector.service: no EnvironmentFile after its Environment= lines")
	}
}

// checkAgentOwnCreds checks that the agent container a of pod p holds only
// its own node's credentials (issue 8, QA: the DaemonSet mounted the whole
// netwatch-sensor-creds secret, every sensor's credentials on every node):
// the agent mounts no secret volume, its credentials file creds is in an
// emptyDir, and an init container with NODE_NAME from spec.nodeName copies
// exactly $(NODE_NAME).creds of a netwatch-sensor-creds volume there.
func checkAgentOwnCreds(t *testing.T, p podSpec, a container, creds string) {
	t.Helper()
	vol := map[string]int{}
	for i, v := range p.Volumes {
		vol[v.Name] = i
	}
	var credsVol string
	for _, m := range a.VolumeMounts {
		i, ok := vol[m.Name]
		if !ok {
			t.Errorf("agent mounts unknown volume %s", m.Name)
			continue
		}
		if p.Volumes[i].Secret != nil {
			t.Errorf("agent mounts secret %s at %s: it must hold only its own node's credentials", p.Volumes[i].Secret.SecretName, m.MountPath)
		}
		if m.MountPath == filepath.Dir(creds) {
			credsVol = m.Name
		}
	}
	if credsVol == "" || p.Volumes[vol[credsVol]].EmptyDir == nil {
		t.Fatalf("agent: %s is not in a mounted emptyDir", creds)
	}
	for _, ic := range p.InitContainers {
		if len(ic.Env) == 0 || ic.Env[0].Name != "NODE_NAME" || ic.Env[0].ValueFrom == nil || ic.Env[0].ValueFrom.FieldRef == nil ||
			ic.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" || len(ic.Command) != 3 || ic.Command[0] != "cp" {
			continue
		}
		src, dst := ic.Command[1], ic.Command[2]
		var srcSecret, dstEmpty bool
		for _, m := range ic.VolumeMounts {
			v := p.Volumes[vol[m.Name]]
			if m.MountPath == filepath.Dir(src) && v.Secret != nil && v.Secret.SecretName == "netwatch-sensor-creds" {
				srcSecret = true
			}
			if m.MountPath == filepath.Dir(dst) && m.Name == credsVol {
				dstEmpty = true
			}
		}
		if filepath.Base(src) == "$(NODE_NAME).creds" && dst == creds && srcSecret && dstEmpty {
			return
		}
	}
	t.Errorf("agent: no init container copies only $(NODE_NAME).creds of netwatch-sensor-creds into %s", creds)
}
