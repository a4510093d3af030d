package libvirt

import (
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/sdk"
)

// Config is the plugin's table in config.toml. Written out with the
// defaults of Defaults:
//
//	[plugins.libvirt.config]
//	uri = "qemu:///system"        # the libvirt connection; qemu:///session for a user's own domains
//	socket = ""                   # libvirtd's socket; empty: libvirt's default for the URI
//
//	[plugins.libvirt.config.timeouts]
//	connect = "5s"                # dial libvirtd and open the connection
//	stop = "1m"                   # destroy (SIGTERM, then SIGKILL) until the domain is off
//	unlock = "30s"                # wait for another process to let go of an off domain's disk
//
//	[plugins.libvirt.config.guest]
//	ready_wait = "30s"            # wait for the guest agent to answer
//	chunk_size = 131072           # bytes per guest-file-read/-write, at most 196608
//	kill = ["kill", "-KILL"]      # guest command that kills a timed-out command's pid
//	max_output = 16777216         # bytes of a guest command's stdout, and of its stderr, kept
//
//	[plugins.libvirt.config.vms.NAME]
//	domain = "NAME"               # the libvirt domain; default: the VM's name
//	snapshot = ""                 # restored when none is named; default: libvirt's current snapshot
type Config struct {
	// URI is the libvirt connection URI. The driver speaks libvirt's RPC
	// protocol over libvirtd's local socket: qemu:///system (root's
	// domains, the default) or qemu:///session (a user's).
	URI string `toml:"uri"`
	// Socket is libvirtd's read-write socket; empty means libvirt's
	// default for URI.
	Socket string `toml:"socket"`
	// Timeouts is the [timeouts] table.
	Timeouts Timeouts `toml:"timeouts"`
	// Guest is the [guest] table: guest operations through the agent.
	Guest Guest `toml:"guest"`
	// VMs are the domains the driver operates, by VM name. The driver
	// touches no other domain of the connection.
	VMs map[string]VMConfig `toml:"vms"`
}

// Timeouts bound the waits of single operations; each also ends with the
// caller's deadline.
type Timeouts struct {
	// Connect bounds dialing libvirtd and opening the connection.
	Connect time.Duration `toml:"connect"`
	// Stop bounds a power-off (libvirt's destroy: SIGTERM, SIGKILL after
	// ten seconds) until the domain is off.
	Stop time.Duration `toml:"stop"`
	// Unlock is how long Unlock and Cleanup wait for another process to
	// let go of an off domain's disk image before they answer locked.
	Unlock time.Duration `toml:"unlock"`
}

// Guest configures guest operations through the QEMU guest agent, which
// libvirt reaches on the domain's org.qemu.guest_agent.0 channel.
type Guest struct {
	// ReadyWait is how long a guest operation waits for the agent to
	// answer, as it does not while the guest boots, before it answers
	// invalid state.
	ReadyWait time.Duration `toml:"ready_wait"`
	// ChunkSize is the number of bytes moved per guest-file-read or
	// guest-file-write.
	ChunkSize int `toml:"chunk_size"`
	// Kill is the guest command, given the guest pid as its last
	// argument, that kills a command that outlived its timeout. For a
	// Windows guest: ["taskkill", "/F", "/PID"].
	Kill []string `toml:"kill"`
	// MaxOutput bounds the bytes of a guest command's stdout, and of its
	// stderr, that Exec returns; the rest is dropped.
	MaxOutput int `toml:"max_output"`
}

// VMConfig is one VM: a libvirt domain.
type VMConfig struct {
	// Domain is the libvirt domain's name; default the VM's name.
	Domain string `toml:"domain"`
	// Snapshot is the snapshot a restore without a name goes to when
	// libvirt has no current snapshot for the domain.
	Snapshot string `toml:"snapshot"`
}

// Defaults returns the configuration used for every key left unset.
func Defaults() Config {
	return Config{
		URI: "qemu:///system",
		Timeouts: Timeouts{
			Connect: 5 * time.Second,
			Stop:    time.Minute,
			Unlock:  30 * time.Second,
		},
		Guest: Guest{ReadyWait: 30 * time.Second, ChunkSize: 128 << 10, Kill: []string{"kill", "-KILL"}, MaxOutput: 16 << 20},
	}
}

// maxChunk is the largest chunk guest file transfers use. An agent
// command of more than about 256 KiB reaches the agent through libvirt
// mangled ("JSON parse error, expecting value", after seconds): a 192 KiB
// chunk is 256 KiB in base64.
const maxChunk = 192 << 10

// vm is a configured VM.
type vm struct {
	name string
	VMConfig
}

// settings is a validated configuration.
type settings struct {
	Config
	vms map[string]*vm
}

// load decodes and validates the plugin's table; every mistake names its
// key and line.
func load(cfg sdk.Config) (*settings, error) {
	c := Defaults()
	if err := cfg.Decode(&c); err != nil {
		return nil, err
	}
	u, err := url.Parse(c.URI)
	switch {
	case err != nil:
		return nil, cfg.Errorf([]string{"uri"}, "%q is not a URI: %v", c.URI, err)
	case u.Scheme != "qemu" || u.Host != "" || (u.Path != "/system" && u.Path != "/session"):
		return nil, cfg.Errorf([]string{"uri"}, "%q: the driver speaks to a local libvirtd's QEMU driver: use qemu:///system or qemu:///session "+
			"(run the plugin on the libvirt host)", c.URI)
	}
	if c.Socket == "" {
		c.Socket = defaultSocket(u.Path)
		if c.Socket == "" {
			return nil, cfg.Errorf([]string{"socket"}, "missing: qemu:///session has no fixed socket here (XDG_RUNTIME_DIR is not set); give the path of libvirtd's libvirt-sock")
		}
	} else {
		c.Socket = cfg.Path(c.Socket)
	}
	for key, d := range map[string]time.Duration{
		"timeouts.connect": c.Timeouts.Connect, "timeouts.stop": c.Timeouts.Stop, "timeouts.unlock": c.Timeouts.Unlock,
		"guest.ready_wait": c.Guest.ReadyWait,
	} {
		if d <= 0 {
			return nil, cfg.Errorf(strings.Split(key, "."), "must be a positive duration such as \"10s\"")
		}
	}
	if c.Guest.ChunkSize <= 0 || c.Guest.ChunkSize > maxChunk {
		return nil, cfg.Errorf([]string{"guest", "chunk_size"}, "must be between 1 and %d bytes (192 KiB: libvirt mangles larger agent commands)", maxChunk)
	}
	if c.Guest.MaxOutput <= 0 {
		return nil, cfg.Errorf([]string{"guest", "max_output"}, "must be a positive number of bytes")
	}
	if len(c.Guest.Kill) == 0 {
		return nil, cfg.Errorf([]string{"guest", "kill"}, "must name a guest command, e.g. [\"kill\", \"-KILL\"]")
	}
	s := &settings{Config: c, vms: map[string]*vm{}}
	domains := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(c.VMs)) {
		vc := c.VMs[name]
		if name == "" {
			return nil, cfg.Errorf([]string{"vms"}, "a VM needs a name")
		}
		if vc.Domain == "" {
			vc.Domain = name
		}
		if other, ok := domains[vc.Domain]; ok {
			return nil, cfg.Errorf([]string{"vms", name, "domain"}, "domain %q is already VM %q: one domain, one VM", vc.Domain, other)
		}
		domains[vc.Domain] = name
		s.vms[name] = &vm{name: name, VMConfig: vc}
	}
	return s, nil
}
