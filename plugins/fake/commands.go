package fake

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MaxOutput bounds what Exec returns of each of stdout and stderr, or the
// request's max_output when it is smaller; the rest is dropped and the
// result says so (§9.5).
const MaxOutput = 1 << 20

// MaxCopyOut bounds the size of a guest file CopyOut copies (§9.5).
const MaxCopyOut = 1 << 30

// eicar is the EICAR anti-virus test file's content, which every scanner
// reports as infected. It is split in two so that this source file is not
// itself reported by a scanner on a developer's machine.
var eicar = []byte(`X5O!P%@AP[4\PZX54(P^)7CC)7}$` + `EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`)

// shell runs the guest's built-in commands, deterministic stand-ins for
// what an analysis system runs in a real guest:
//
//	echo [-n] ARG...     the arguments, space-separated
//	cat FILE...          the files' contents
//	ls [PATH...]         a directory's entries, one a line, sorted
//	sleep DURATION       waits; DURATION is seconds ("1.5") or Go ("300ms")
//	exit [N]             exit status N
//	true, false          exit status 0, 1
//	sha256sum FILE...    "<hex>  FILE" a line
//	scan [-o LOG] FILE   "infected" (status 1) if FILE holds the EICAR test
//	                     string, else "clean" (status 0); with -o the same
//	                     line, after FILE's name, is also written to LOG
//	dd [if=F] [bs=N] [count=N]
//	                     copies F (default /dev/zero, endless zeros) to
//	                     stdout in blocks of N bytes (default 512), count
//	                     blocks at most; its summary goes to stderr
//
// The program is found by its base name, Unix or Windows style, with or
// without ".exe". Anything else exits 127 with "not found" on stderr, as a
// shell does. Files are guest paths.
type shell struct {
	root   *os.Root
	stdout output
	stderr output
}

// output is what a command wrote to one stream, up to limit bytes; the
// rest is counted as dropped, never kept. A zero limit keeps everything.
type output struct {
	bytes.Buffer
	limit   int
	dropped bool
}

func (o *output) write(s string) {
	if o.limit > 0 {
		if room := o.limit - o.Len(); room < len(s) {
			s, o.dropped = s[:max(room, 0)], true
		}
	}
	o.WriteString(s)
}

// run runs prog and returns its exit status; an error only means ctx ended
// while the command ran.
func (sh *shell) run(ctx context.Context, prog string, args []string) (int, error) {
	name := path.Base(strings.ReplaceAll(prog, `\`, "/"))
	if strings.HasSuffix(strings.ToLower(name), ".exe") {
		name = name[:len(name)-len(".exe")]
	}
	switch name {
	case "echo":
		return sh.echo(args), nil
	case "cat":
		return sh.cat(args), nil
	case "ls":
		return sh.ls(args), nil
	case "sleep":
		return sh.sleep(ctx, args)
	case "exit":
		return sh.exit(args), nil
	case "true":
		return 0, nil
	case "false":
		return 1, nil
	case "sha256sum":
		return sh.sha256sum(args), nil
	case "scan":
		return sh.scan(args), nil
	case "dd":
		return sh.dd(ctx, args)
	}
	sh.errorf("sh: 1: %s: not found\n", prog)
	return 127, nil
}

func (sh *shell) printf(format string, args ...any) {
	sh.stdout.write(fmt.Sprintf(format, args...))
}
func (sh *shell) errorf(format string, args ...any) {
	sh.stderr.write(fmt.Sprintf(format, args...))
}

func (sh *shell) echo(args []string) int {
	end := "\n"
	if len(args) > 0 && args[0] == "-n" {
		args, end = args[1:], ""
	}
	sh.printf("%s%s", strings.Join(args, " "), end)
	return 0
}

func (sh *shell) cat(args []string) int {
	code := 0
	for _, a := range args {
		data, err := sh.root.ReadFile(guestRel(a))
		if err != nil {
			sh.errorf("cat: %s: %s\n", a, describe(err))
			code = 1
			continue
		}
		sh.printf("%s", data)
	}
	return code
}

func (sh *shell) ls(args []string) int {
	if len(args) == 0 {
		args = []string{"."}
	}
	code := 0
	for _, a := range args {
		rel := guestRel(a)
		fi, err := sh.root.Stat(rel)
		if err != nil {
			sh.errorf("ls: cannot access '%s': %s\n", a, describe(err))
			code = 2
			continue
		}
		if !fi.IsDir() {
			sh.printf("%s\n", a)
			continue
		}
		dir, err := sh.root.Open(rel)
		if err == nil {
			var names []string
			names, err = dir.Readdirnames(-1)
			dir.Close()
			slices.Sort(names)
			for _, n := range names {
				sh.printf("%s\n", n)
			}
		}
		if err != nil {
			sh.errorf("ls: cannot open directory '%s': %s\n", a, describe(err))
			code = 2
		}
	}
	return code
}

func (sh *shell) sleep(ctx context.Context, args []string) (int, error) {
	if len(args) != 1 {
		sh.errorf("sleep: expects one operand, a duration\n")
		return 1, nil
	}
	d, err := parseSleep(args[0])
	if err != nil {
		sh.errorf("sleep: invalid time interval '%s'\n", args[0])
		return 1, nil
	}
	if err := sleep(ctx, d); err != nil {
		return 0, err
	}
	return 0, nil
}

func parseSleep(s string) (time.Duration, error) {
	if secs, err := strconv.ParseFloat(s, 64); err == nil {
		if secs < 0 || secs > (1<<62)/float64(time.Second) {
			return 0, errors.New("out of range")
		}
		return time.Duration(secs * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(s)
	if err == nil && d < 0 {
		err = errors.New("negative")
	}
	return d, err
}

func (sh *shell) exit(args []string) int {
	if len(args) == 0 {
		return 0
	}
	n, err := strconv.Atoi(args[0])
	if err != nil {
		sh.errorf("sh: 1: exit: Illegal number: %s\n", args[0])
		return 2
	}
	return n & 0xff // exit statuses are one byte
}

func (sh *shell) sha256sum(args []string) int {
	code := 0
	for _, a := range args {
		data, err := sh.root.ReadFile(guestRel(a))
		if err != nil {
			sh.errorf("sha256sum: %s: %s\n", a, describe(err))
			code = 1
			continue
		}
		sh.printf("%x  %s\n", sha256.Sum256(data), a)
	}
	return code
}

func (sh *shell) scan(args []string) int {
	var log string
	if len(args) == 3 && args[0] == "-o" {
		log, args = args[1], args[2:]
	}
	if len(args) != 1 {
		sh.errorf("usage: scan [-o LOG] FILE\n")
		return 2
	}
	data, err := sh.root.ReadFile(guestRel(args[0]))
	if err != nil {
		sh.errorf("scan: %s: %s\n", args[0], describe(err))
		return 2
	}
	verdict, code := "clean", 0
	if bytes.Contains(data, eicar) {
		verdict, code = "infected", 1
	}
	sh.printf("%s\n", verdict)
	if log != "" {
		rel := guestRel(log)
		if dir := path.Dir(rel); dir != "." {
			err = sh.root.MkdirAll(dir, 0o755)
		}
		if err == nil {
			err = sh.root.WriteFile(rel, fmt.Appendf(nil, "%s: %s\n", args[0], verdict), 0o644)
		}
		if err != nil {
			sh.errorf("scan: %s: %s\n", log, describe(err))
			return 2
		}
	}
	return code
}

// dd writes count blocks of bs bytes of its input to stdout, as
// coreutils' dd does; its input is endless zeros unless if= names a guest
// file. It yields to ctx between blocks.
func (sh *shell) dd(ctx context.Context, args []string) (int, error) {
	bs, count, in := 512, -1, ""
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		var err error
		switch k {
		case "if":
			in = v
		case "bs":
			bs, err = strconv.Atoi(v)
			if err == nil && (bs <= 0 || bs > 16<<20) {
				err = errors.New("out of range")
			}
		case "count":
			count, err = strconv.Atoi(v)
		default:
			err = errors.New("unrecognized operand")
		}
		if err != nil {
			sh.errorf("dd: invalid operand '%s'\n", a)
			return 1, nil
		}
	}
	var src []byte
	if in != "" && in != "/dev/zero" {
		data, err := sh.root.ReadFile(guestRel(in))
		if err != nil {
			sh.errorf("dd: failed to open '%s': %s\n", in, describe(err))
			return 1, nil
		}
		src = data
	}
	block := string(make([]byte, bs))
	blocks, bytesOut := 0, 0
	for ; count < 0 || blocks < count; blocks++ {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if src != nil {
			if len(src) == 0 {
				break
			}
			n := min(bs, len(src))
			block, src = string(src[:n]), src[n:]
		}
		sh.stdout.write(block)
		bytesOut += len(block)
	}
	sh.errorf("%d+0 records in\n%d+0 records out\n%d bytes copied\n", blocks, blocks, bytesOut)
	return 0, nil
}

// describe words a file error as a guest's tools would.
func describe(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "No such file or directory"
	case errors.Is(err, syscall.EISDIR):
		return "Is a directory"
	case errors.Is(err, fs.ErrPermission):
		return "Permission denied"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
