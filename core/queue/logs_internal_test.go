package queue

import (
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/assert"

	"github.com/sandboxhq/sandbox/sdk/plugintest"
)

// River's warnings and errors reach sandbox's log at WARN and ERROR: at the
// default level (warn) a database outage or a discarded job shows, and
// River's chatter does not.
func TestRiversLogKeepsItsLevels(t *testing.T) {
	var out plugintest.Buffer
	log := newSlog(hclog.New(&hclog.LoggerOptions{Name: "river", Level: hclog.Warn, Output: &out}))
	log.Info("producer: fetched jobs", "count", 3)
	log.Warn("notifier: connection lost", "err", errors.New("connection refused"))
	log.WithGroup("job").Error("jobexecutor: job discarded", "id", 7)
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if assert.Len(t, lines, 2, out.String()) {
		assert.Contains(t, lines[0], "[WARN]  river: notifier: connection lost: err=\"connection refused\"")
		assert.Contains(t, lines[1], "[ERROR] river: jobexecutor: job discarded: job.id=7")
	}
}
