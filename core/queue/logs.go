package queue

import (
	"context"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// slogHandler hands River's and goose's structured log to hclog at the
// level each line was logged at: a database outage or a discarded job that
// River reports as a warning or an error is a warning or an error in
// sandbox's log, not an INFO line hidden at the default level.
type slogHandler struct {
	log   hclog.Logger
	attrs []any
	group string
}

func newSlog(log hclog.Logger) *slog.Logger { return slog.New(&slogHandler{log: log}) }

func (h *slogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return hclogLevel(l) >= h.log.GetLevel()
}

func (h *slogHandler) Handle(_ context.Context, r slog.Record) error {
	args := append([]any(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		args = append(args, h.key(a.Key), a.Value.Resolve().Any())
		return true
	})
	h.log.Log(hclogLevel(r.Level), r.Message, args...)
	return nil
}

func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := &slogHandler{log: h.log, attrs: append([]any(nil), h.attrs...), group: h.group}
	for _, a := range attrs {
		n.attrs = append(n.attrs, h.key(a.Key), a.Value.Resolve().Any())
	}
	return n
}

func (h *slogHandler) WithGroup(name string) slog.Handler {
	g := name
	if h.group != "" {
		g = h.group + "." + name
	}
	return &slogHandler{log: h.log, attrs: h.attrs, group: g}
}

func (h *slogHandler) key(k string) string {
	if h.group == "" {
		return k
	}
	return h.group + "." + k
}

func hclogLevel(l slog.Level) hclog.Level {
	switch {
	case l >= slog.LevelError:
		return hclog.Error
	case l >= slog.LevelWarn:
		return hclog.Warn
	case l >= slog.LevelInfo:
		return hclog.Info
	default:
		return hclog.Debug
	}
}

// oneLine is a message for a log line or a field, one line long.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }
