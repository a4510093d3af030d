package api

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/hypervisor"
	"github.com/sandboxhq/sandbox/core/lifecycle"
)

// vmInfo is one VM of this host in GET /v1/vms.
type vmInfo struct {
	Name     string   `json:"name"`
	Plugin   string   `json:"plugin"`
	Profiles []string `json:"profiles"`
	// Status is the VM's state as its driver reports it; StatusError says
	// why it could not be read.
	Status      *hypervisor.Status `json:"status,omitempty"`
	StatusError string             `json:"status_error,omitempty"`
	// Step is the step of the task on the VM, or of the last one.
	Step *engine.Event `json:"step,omitempty"`
	// Quarantine is set for a quarantined VM.
	Quarantine *lifecycle.QuarantineEntry `json:"quarantine,omitempty"`
	// OutOfService says why the service stopped using the VM, if it did.
	OutOfService string `json:"out_of_service,omitempty"`
}

// vms reads every VM of this host, their states in parallel.
func (s *Server) vms(ctx context.Context) []vmInfo {
	q := s.opts.Queue
	vms := q.VMs()
	profiles := q.Profiles()
	out := make([]vmInfo, 0, len(vms))
	for _, name := range slices.Sorted(maps.Keys(vms)) {
		info := vmInfo{Name: name, Plugin: vms[name].Plugin, Profiles: []string{}}
		for _, p := range slices.Sorted(maps.Keys(profiles)) {
			if slices.Contains(profiles[p].VMs, name) {
				info.Profiles = append(info.Profiles, p)
			}
		}
		if e, ok := q.Step(name); ok {
			info.Step = &e
		}
		info.OutOfService = q.Unusable()[name]
		out = append(out, info)
	}
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() {
			vm := vms[out[i].Name]
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if st, err := vm.Driver.Status(sctx, vm.Name); err != nil {
				out[i].StatusError = err.Error()
			} else {
				out[i].Status = &st
			}
			if e, ok, err := s.opts.Lifecycle.Quarantined(sctx, vm); err == nil && ok {
				out[i].Quarantine = &e
			}
		})
	}
	wg.Wait()
	return out
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]any{"host": s.opts.Queue.Host(), "vms": s.vms(r.Context())})
	return nil
}

// cleanupVM is POST /v1/vms/{name}/cleanup: once the VM's current task
// (if any) has ended, a complete cleanup; a success puts a VM taken out of
// service back into it and lifts its quarantine.
func (s *Server) cleanupVM(w http.ResponseWriter, r *http.Request) error {
	rep, err := s.opts.Queue.Cleanup(r.Context(), r.PathValue("name"))
	if rep == nil && err != nil {
		return err
	}
	status := http.StatusOK
	if err != nil {
		status = http.StatusConflict
	}
	writeJSON(w, status, rep)
	return nil
}
