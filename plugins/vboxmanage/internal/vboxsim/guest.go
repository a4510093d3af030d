package vboxsim

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// guestOpts are guestcontrol's parsed options.
type guestOpts struct {
	user, password, passwordFile, domain string
	havePassword                         bool
	exe                                  string
	timeout                              time.Duration
	targetDir                            string
	positional                           []string
	argv                                 []string
}

// guestcontrol: `guestcontrol <vm> run|copyto|copyfrom [options]`. The VM
// must be running with its guest execution service up; the credentials
// must match one of the guest's accounts.
func (s *sim) guestcontrol(args []string) int {
	if len(args) < 2 {
		return s.o.syntax("No sub-command specified!")
	}
	ref, sub := args[0], strings.ToLower(args[1])
	if sub != "run" && sub != "copyto" && sub != "copyfrom" {
		return s.o.syntax("Unknown sub-command: '%s'", args[1])
	}
	opts, code := s.parseGuestOpts(sub, args[2:])
	if code != 0 {
		return code
	}
	if opts.user == "" {
		opts.user = s.env.HostUser
	}
	if opts.passwordFile != "" {
		data, err := os.ReadFile(opts.passwordFile)
		if err != nil {
			s.o.errorln("Error reading password from file '%s': %v", opts.passwordFile, err)
			return 1
		}
		opts.password, opts.havePassword = strings.TrimRight(firstLine(string(data)), "\r"), true
	}

	var took, booting bool
	var vm VM
	err := s.update(func(w *World) error {
		v := w.Find(ref)
		if v == nil {
			code = s.o.notFound("guestcontrol", ref)
			return nil
		}
		took, _, code = s.lockShared("guestcontrol", v, false)
		vm = *v
		if f := &w.Config.Faults; code == 0 && v.State == "running" && f.GuestNotReady > 0 {
			f.GuestNotReady--
			booting = true
		}
		return nil
	})
	if took {
		defer func() { _ = s.release(ref) }()
	}
	if err != nil || code != 0 {
		return max(code, s.status(err))
	}
	if vm.State != "running" {
		s.o.errorln("Machine \"%s\" is not running (currently %s)!", ref, longName(vm.State))
		return 1
	}
	if booting || !s.guestReady(&vm) {
		s.guestStarting()
		return 1
	}
	if want, ok := vm.GuestUsers[opts.user]; !ok || !opts.havePassword || want != opts.password {
		s.o.api(apiError{msg: "The specified user was not able to logon on guest", hr: iprtError,
			component: "GuestSessionWrap", iface: "IGuestSession",
			context: "WaitForArray(ComSafeArrayAsInParam(aSessionWaitFlags), 30 * 1000, &enmWaitResult)", file: "VBoxManageGuestCtrl.cpp", line: 938})
		return 1
	}
	root := filepath.Join(s.env.Home, guestDir, vm.UUID)
	switch sub {
	case "run":
		return s.guestRun(root, opts)
	case "copyto":
		return s.copyTo(root, opts)
	default:
		return s.copyFrom(root, opts)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// guestReady reports whether the guest execution service answers: Guest
// Additions need a while after the VM starts.
// guestStarting prints what guest control says of a guest still booting,
// in the words Faults.GuestStarting picks.
func (s *sim) guestStarting() {
	wait := "WaitForArray(ComSafeArrayAsInParam(aSessionWaitFlags), 30 * 1000, &enmWaitResult)"
	switch s.cfg.Faults.GuestStarting {
	case "not-started":
		s.o.api(apiError{msg: "Session is not in started state", hr: unexpected,
			component: "GuestSessionWrap", iface: "IGuestSession", context: wait, file: "VBoxManageGuestCtrl.cpp", line: 938})
	case "starting":
		s.o.errorln("Error starting guest session (current status is: starting)")
	case "logon":
		s.o.api(apiError{msg: "The specified user was not able to logon on guest", hr: iprtError,
			component: "GuestSessionWrap", iface: "IGuestSession", context: wait, file: "VBoxManageGuestCtrl.cpp", line: 938})
	default:
		s.o.api(apiError{msg: "The guest execution service is not ready (yet)", hr: iprtError,
			component: "GuestSessionWrap", iface: "IGuestSession", context: wait, file: "VBoxManageGuestCtrl.cpp", line: 938})
	}
}

func (s *sim) guestReady(vm *VM) bool {
	return vm.State == "running" && !time.Now().Before(vm.StartedAt.Add(s.cfg.Timing.GuestReady.D()))
}

func (s *sim) parseGuestOpts(sub string, args []string) (guestOpts, int) {
	var o guestOpts
	withValue := map[string]bool{
		"--username": true, "--user": true, "--password": true, "--passwordfile": true, "--domain": true,
		"--exe": true, "--timeout": true, "-E": true, "--putenv": true, "--target-directory": true,
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			if sub == "run" {
				o.argv = args[i+1:]
			} else {
				o.positional = append(o.positional, args[i+1:]...)
			}
			break
		}
		name, val, hasEq := strings.Cut(a, "=")
		if !strings.HasPrefix(a, "-") {
			o.positional = append(o.positional, a)
			continue
		}
		if withValue[name] && !hasEq {
			if i+1 >= len(args) {
				return o, s.o.syntax("Missing value for option %s", name)
			}
			i++
			val = args[i]
		}
		switch name {
		case "--username", "--user":
			o.user = val
		case "--password":
			o.password, o.havePassword = val, true
		case "--passwordfile":
			o.passwordFile = val
		case "--domain":
			o.domain = val
		case "--exe":
			o.exe = val
		case "--timeout":
			ms, err := strconv.ParseUint(val, 10, 32)
			if err != nil {
				return o, s.o.syntax("Invalid timeout value '%s'", val)
			}
			o.timeout = time.Duration(ms) * time.Millisecond
		case "--target-directory":
			o.targetDir = val
		case "-E", "--putenv", "-v", "--verbose", "-q", "--quiet", "--unquoted-args", "--ignore-operhaned-processes",
			"--profile", "--no-wait-stdout", "--wait-stdout", "--no-wait-stderr", "--wait-stderr", "--dos2unix",
			"--unix2dos", "--follow", "-R", "--recursive", "--dryrun":
		default:
			return o, s.o.syntax("Unknown option: %s", a)
		}
	}
	if sub == "run" {
		if o.exe == "" && len(o.positional) > 0 {
			o.exe = o.positional[0]
		}
		if o.exe == "" {
			return o, s.o.syntax("No executable specified!")
		}
	}
	return o, 0
}

// guestFile maps a guest path (Windows or Unix style) into the VM's
// directory on the host, never outside it.
func guestFile(root, p string) string {
	p = strings.ReplaceAll(p, `\`, "/")
	if len(p) >= 2 && p[1] == ':' {
		p = p[2:]
	}
	return filepath.Join(root, filepath.FromSlash(path.Clean("/"+p)))
}

// guestRun runs one of the simulated guest's programs and maps its exit
// code the way guestcontrol run does: 0 stays 0, 1..93 become 33..125,
// anything higher 126; a --timeout that passes is 20.
func (s *sim) guestRun(root string, o guestOpts) int {
	prog := strings.ToLower(path.Base(strings.ReplaceAll(o.exe, `\`, "/")))
	prog = strings.TrimSuffix(prog, ".exe")
	var args []string
	if len(o.argv) > 1 {
		args = o.argv[1:]
	}
	stdout, stderr := s.o.rawOut, s.o.rawErr
	rc := 0
	switch prog {
	case "echo":
		fmt.Fprintln(stdout, strings.Join(args, " "))
	case "stderr":
		fmt.Fprintln(stderr, strings.Join(args, " "))
	case "true":
	case "false":
		rc = 1
	case "exit":
		if len(args) > 0 {
			rc, _ = strconv.Atoi(args[0])
		}
	case "cat":
		for _, a := range args {
			data, err := os.ReadFile(guestFile(root, a))
			if err != nil {
				fmt.Fprintf(stderr, "cat: %s: No such file or directory\n", a)
				rc = 1
				continue
			}
			_, _ = stdout.Write(data)
		}
	case "scan":
		rc = scan(root, args, stdout, stderr)
	case "dd":
		rc = dd(args, stdout, stderr)
	case "sleep":
		secs := 0.0
		if len(args) > 0 {
			secs, _ = strconv.ParseFloat(args[0], 64)
		}
		d := time.Duration(secs * float64(time.Second))
		s.flush()
		if o.timeout > 0 && d > o.timeout {
			time.Sleep(o.timeout)
			return 20
		}
		time.Sleep(d)
	default:
		s.o.errorln("Error starting guest process: VERR_FILE_NOT_FOUND: %s", o.exe)
		return 1
	}
	switch {
	case rc == 0:
		return 0
	case rc < 0 || rc >= 94:
		return 126
	default:
		return rc + 32
	}
}

// dd writes count blocks of bs zero bytes to stdout, as `dd if=/dev/zero`
// does; it reads no other input.
func dd(args []string, stdout, stderr io.Writer) int {
	bs, count := 512, 0
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		n, err := strconv.Atoi(v)
		switch {
		case k == "if" && v == "/dev/zero":
		case k == "bs" && err == nil && n > 0 && n <= 16<<20:
			bs = n
		case k == "count" && err == nil && n >= 0:
			count = n
		default:
			fmt.Fprintf(stderr, "dd: invalid operand '%s'\n", a)
			return 1
		}
	}
	block := make([]byte, bs)
	for range count {
		if _, err := stdout.Write(block); err != nil {
			return 1
		}
	}
	fmt.Fprintf(stderr, "%d+0 records in\n%d+0 records out\n%d bytes copied\n", count, count, count*bs)
	return 0
}

// eicar is the EICAR anti-virus test file's content, split so that no
// scanner flags this source file.
var eicar = []byte(`X5O!P%@AP[4\PZX54(P^)7CC)7}$` + `EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`)

// scan is the simulated guest's scanner, `scan [-o LOG] FILE`: exit 1 and
// "infected" when FILE holds the EICAR test string, else 0 and "clean";
// with -o the verdict also goes to the guest file LOG.
func scan(root string, args []string, stdout, stderr io.Writer) int {
	var log string
	if len(args) == 3 && args[0] == "-o" {
		log, args = args[1], args[2:]
	}
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: scan [-o LOG] FILE")
		return 2
	}
	data, err := os.ReadFile(guestFile(root, args[0]))
	if err != nil {
		fmt.Fprintf(stderr, "scan: %s: No such file or directory\n", args[0])
		return 2
	}
	verdict, rc := "clean", 0
	if bytes.Contains(data, eicar) {
		verdict, rc = "infected", 1
	}
	fmt.Fprintln(stdout, verdict)
	if log != "" {
		p := guestFile(root, log)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err == nil {
			err = os.WriteFile(p, fmt.Appendf(nil, "%s: %s\n", args[0], verdict), 0o644)
		}
		if err != nil {
			fmt.Fprintf(stderr, "scan: %s: %v\n", log, err)
			return 2
		}
	}
	return rc
}

func (s *sim) copyTo(root string, o guestOpts) int {
	srcs, dst := o.positional, o.targetDir
	if dst == "" {
		if len(srcs) < 2 {
			return s.o.syntax("No destination specified!")
		}
		srcs, dst = srcs[:len(srcs)-1], srcs[len(srcs)-1]
	}
	if len(srcs) == 0 {
		return s.o.syntax("No source(s) specified!")
	}
	target := guestFile(root, dst)
	intoDir := o.targetDir != "" || strings.HasSuffix(dst, "/") || strings.HasSuffix(dst, `\`) || isDir(target)
	for _, src := range srcs {
		to := target
		if intoDir {
			to = filepath.Join(target, filepath.Base(src))
		}
		if err := copyFile(src, to); err != nil {
			s.o.errorln("Error copying \"%s\" to guest: %v", src, err)
			return 1
		}
	}
	return 0
}

func (s *sim) copyFrom(root string, o guestOpts) int {
	srcs, dst := o.positional, o.targetDir
	if dst == "" {
		if len(srcs) < 2 {
			return s.o.syntax("No destination specified!")
		}
		srcs, dst = srcs[:len(srcs)-1], srcs[len(srcs)-1]
	}
	if len(srcs) == 0 {
		return s.o.syntax("No source(s) specified!")
	}
	intoDir := o.targetDir != "" || isDir(dst)
	for _, src := range srcs {
		from := guestFile(root, src)
		if _, err := os.Stat(from); err != nil {
			s.o.errorln("File system object \"%s\" on guest not found", src)
			return 1
		}
		to := dst
		if intoDir {
			to = filepath.Join(dst, path.Base(strings.ReplaceAll(src, `\`, "/")))
		}
		if err := copyFile(from, to); err != nil {
			s.o.errorln("Error copying \"%s\" from guest: %v", src, err)
			return 1
		}
	}
	return 0
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
