package host

import (
	"bytes"
	"fmt"
	"sync"

	"github.com/hashicorp/go-hclog"
)

// maxStrayLine bounds one line of a plugin's stray output in the host's
// log; the rest of a longer line is dropped, and the line says so.
const maxStrayLine = 4 << 10

// strayOutput receives what a plugin process writes to its stdout or
// stderr after the handshake. go-plugin's Serve puts pipes of its own in
// the plugin's os.Stdout and os.Stderr then, and streams what they carry to
// the host (ClientConfig.SyncStdout and SyncStderr), which would discard it.
// Such a line is a driver bug (a fmt.Println left in, a library printing
// to os.Stdout): it is logged at warning level, one log line per line
// written, naming the plugin, so that it shows at the default log level.
type strayOutput struct {
	log    hclog.Logger
	plugin string
	stream string

	mu  sync.Mutex
	buf []byte
	cut int // bytes dropped from the current line
}

func newStrayOutput(log hclog.Logger, plugin, stream string) *strayOutput {
	return &strayOutput{log: log, plugin: plugin, stream: stream}
}

// Write logs every complete line of p and keeps the last, unfinished one
// for the next write. It never fails: a plugin's output must not stop it.
func (w *strayOutput) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		chunk, rest, complete := bytes.Cut(p, []byte{'\n'})
		room := maxStrayLine - len(w.buf)
		if len(chunk) > room {
			w.cut += len(chunk) - room
			chunk = chunk[:room]
		}
		w.buf = append(w.buf, chunk...)
		if !complete {
			break
		}
		w.emit()
		p = rest
	}
	return n, nil
}

// flush logs a last line that ended without a newline.
func (w *strayOutput) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 || w.cut > 0 {
		w.emit()
	}
}

func (w *strayOutput) emit() {
	line := string(bytes.TrimRight(w.buf, "\r"))
	args := []any{"plugin", w.plugin, "line", line}
	if w.cut > 0 {
		args = append(args, "dropped", fmt.Sprintf("%d more bytes of the line", w.cut))
	}
	w.log.Warn(fmt.Sprintf("the plugin wrote a line to its %s, which sandbox does not read: "+
		"a driver logs through the logger sdk.Serve gives its factory", w.stream), args...)
	w.buf, w.cut = w.buf[:0], 0
}
