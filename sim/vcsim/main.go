// Command vcsim runs govmomi's vCenter simulator (Debian's golang-github-vmware-govmomi-dev) on loopback.
//
// Debian ships the simulator package but no vcsim program; this launcher is built by
// `bash tools/dev.sh setup` in GOPATH mode (no module proxy) into .bin/vcsim.
//
// It prints the SDK URL (without credentials) on stdout, then a line "vcsim ready", and runs until
// SIGTERM or SIGINT, when it removes the simulator's temporary datastore directories and exits 0.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"

	// Blank imports register the extra endpoints a vCenter has: the REST API (content library, tags),
	// the lookup service, storage policies and the token service.
	_ "github.com/vmware/govmomi/lookup/simulator"
	_ "github.com/vmware/govmomi/pbm/simulator"
	_ "github.com/vmware/govmomi/sts/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
)

func main() {
	listen := flag.String("l", "127.0.0.1:0", "listen address host:port (port 0 picks a free one)")
	user := flag.String("username", "", "accepted user name (empty: any login is accepted)")
	// The password may come from the environment so it stays out of the process list.
	password := flag.String("password", "", "accepted password (prefer the VCSIM_PASSWORD environment variable)")
	dc := flag.Int("dc", 1, "number of datacenters")
	cluster := flag.Int("cluster", 1, "clusters per datacenter")
	host := flag.Int("host", 1, "standalone hosts per datacenter")
	clusterHost := flag.Int("cluster-host", 3, "hosts per cluster")
	vms := flag.Int("vm", 2, "VMs per resource pool / host")
	ds := flag.Int("ds", 1, "datastores")
	plainHTTP := flag.Bool("plain-http", false, "serve plain HTTP instead of HTTPS (self-signed)")
	// Slows chosen SOAP methods, e.g. "ReconfigVM_Task=5000": tests interrupt a build mid-way with it.
	methodDelay := flag.String("method-delay", "", "comma-separated Method=milliseconds delays")
	flag.Parse()

	delays := map[string]int{}
	for _, item := range strings.Split(*methodDelay, ",") {
		if item == "" {
			continue
		}
		name, ms, ok := strings.Cut(item, "=")
		n, err := strconv.Atoi(ms)
		if !ok || err != nil || n < 0 {
			fmt.Fprintf(os.Stderr, "vcsim: bad -method-delay item %q (want Method=milliseconds)\n", item)
			os.Exit(2)
		}
		delays[name] = n
	}

	pass := *password
	if pass == "" {
		pass = os.Getenv("VCSIM_PASSWORD")
	}
	if (*user == "") != (pass == "") {
		fmt.Fprintln(os.Stderr, "vcsim: give both -username and a password (or neither)")
		os.Exit(2)
	}
	if _, _, err := net.SplitHostPort(*listen); err != nil {
		fmt.Fprintf(os.Stderr, "vcsim: bad listen address %q: %v\n", *listen, err)
		os.Exit(2)
	}

	model := simulator.VPX()
	model.Datacenter = *dc
	model.Cluster = *cluster
	model.Host = *host
	model.ClusterHost = *clusterHost
	model.Machine = *vms
	model.Datastore = *ds
	if err := model.Create(); err != nil {
		fmt.Fprintf(os.Stderr, "vcsim: creating the inventory: %v\n", err)
		os.Exit(1)
	}
	defer model.Remove()
	model.DelayConfig.MethodDelay = delays
	simulator.Map.AddHandler(extraConfigAsVCenter{})
	simulator.Map.AddHandler(newMacsAsVCenter())

	u := &url.URL{Host: *listen}
	if *user != "" {
		u.User = url.UserPassword(*user, pass)
	}
	model.Service.Listen = u
	if !*plainHTTP {
		model.Service.TLS = new(tls.Config)
	}
	model.Service.RegisterEndpoints = true

	server := model.Service.NewServer()
	defer server.Close()

	// Subscribe before announcing readiness so a signal sent right after "ready" is never fatal.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	shown := *server.URL
	shown.User = nil // never print the password
	fmt.Println(shown.String())
	fmt.Println("vcsim ready")
	<-sig
}
