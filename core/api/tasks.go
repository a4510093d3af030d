package api

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/queue"
)

// submit is POST /v1/tasks: a multipart form with the sample in the field
// "file", and optionally "profile" (repeatable), "vm" and "priority".
// The upload is read within max_sample_size; nothing is queued unless the
// whole request is valid.
func (s *Server) submit(w http.ResponseWriter, r *http.Request) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		return errorf(http.StatusUnsupportedMediaType, "bad_request",
			"send the sample as multipart/form-data with the field \"file\" (curl -F file=@sample.exe)")
	}
	// The form's other fields are small; the bound covers them too.
	r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxSampleSize+1<<20)
	mr, err := r.MultipartReader()
	if err != nil {
		return errorf(http.StatusBadRequest, "bad_request", "not a multipart form: %v", err)
	}
	var (
		req        queue.Request
		name       string
		data       []byte
		haveSample bool
	)
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return tooLargeOr(err, s.opts.MaxSampleSize, "reading the form")
		}
		switch part.FormName() {
		case "file":
			if haveSample {
				return errorf(http.StatusBadRequest, "bad_request", "one sample per task: the form has two \"file\" fields")
			}
			data, err = io.ReadAll(io.LimitReader(part, s.opts.MaxSampleSize+1))
			if err != nil {
				return tooLargeOr(err, s.opts.MaxSampleSize, "reading the sample")
			}
			if int64(len(data)) > s.opts.MaxSampleSize {
				return errorf(http.StatusRequestEntityTooLarge, "too_large",
					"the sample is larger than max_sample_size (%d bytes)", s.opts.MaxSampleSize)
			}
			name, haveSample = part.FileName(), true
		case "profile", "vm", "priority":
			v, err := io.ReadAll(io.LimitReader(part, 4096))
			if err != nil {
				return tooLargeOr(err, s.opts.MaxSampleSize, "reading the form")
			}
			val := strings.TrimSpace(string(v))
			switch part.FormName() {
			case "profile":
				for _, p := range strings.Split(val, ",") {
					if p = strings.TrimSpace(p); p != "" {
						req.Profiles = append(req.Profiles, p)
					}
				}
			case "vm":
				req.VM = val
			case "priority":
				if req.Priority, err = strconv.Atoi(val); err != nil {
					return errorf(http.StatusBadRequest, "bad_priority", "priority %q: want 1 (first) to 4 (last)", val)
				}
			}
		default:
			return errorf(http.StatusBadRequest, "bad_request", "unknown form field %q; the fields are file, profile, vm, priority", part.FormName())
		}
	}
	if !haveSample {
		return errorf(http.StatusBadRequest, "bad_request", "no sample: send it in the form field \"file\"")
	}
	t, err := s.opts.Queue.Submit(r.Context(), name, bytes.NewReader(data), req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/tasks/"+t.ID)
	writeJSON(w, http.StatusAccepted, t)
	return nil
}

// tooLargeOr turns a read past the body's bound into 413.
func tooLargeOr(err error, max int64, doing string) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errorf(http.StatusRequestEntityTooLarge, "too_large", "the request is larger than max_sample_size (%d bytes)", max)
	}
	return errorf(http.StatusBadRequest, "bad_request", "%s: %v", doing, err)
}

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) error {
	t, err := s.opts.Queue.Task(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

// taskSummary is a task in a list: no results, no report.
type taskSummary struct {
	ID       string     `json:"id"`
	Name     string     `json:"name"`
	SHA256   string     `json:"sha256"`
	Profiles []string   `json:"profiles"`
	State    string     `json:"state"`
	Verdict  string     `json:"verdict,omitempty"`
	Created  time.Time  `json:"created"`
	Finished *time.Time `json:"finished,omitempty"`
}

func summarize(t *queue.Task) taskSummary {
	return taskSummary{ID: t.ID, Name: t.Sample.Name, SHA256: t.Sample.SHA256, Profiles: t.Profiles, State: t.State,
		Verdict: string(t.Verdict), Created: t.Created, Finished: t.Finished}
}

var taskStates = []string{queue.StateQueued, queue.StateRunning, queue.StateDone, queue.StateFailed, queue.StateCancelled}

func (s *Server) listTasks(w http.ResponseWriter, r *http.Request) error {
	state := r.URL.Query().Get("state")
	if state != "" && !slices.Contains(taskStates, state) {
		return errorf(http.StatusBadRequest, "bad_request", "state %q: want one of %s", state, strings.Join(taskStates, ", "))
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return errorf(http.StatusBadRequest, "bad_request", "limit %q: want 1 to 1000", v)
		}
		limit = n
	}
	tasks, err := s.opts.Queue.Tasks(r.Context(), state, limit)
	if err != nil {
		return err
	}
	out := make([]taskSummary, len(tasks))
	for i, t := range tasks {
		out[i] = summarize(t)
	}
	writeJSON(w, http.StatusOK, map[string]any{"tasks": out})
	return nil
}

func (s *Server) cancelTask(w http.ResponseWriter, r *http.Request) error {
	t, err := s.opts.Queue.Cancel(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

// profileInfo is a profile in GET /v1/profiles.
type profileInfo struct {
	Name string   `json:"name"`
	VMs  []string `json:"vms"`
	// Here are the profile's VMs on this host.
	Here []string `json:"here"`
}

func (s *Server) listProfiles(w http.ResponseWriter, _ *http.Request) error {
	profiles := s.opts.Queue.Profiles()
	vms := s.opts.Queue.VMs()
	out := []profileInfo{}
	for _, name := range slices.Sorted(maps.Keys(profiles)) {
		p := profileInfo{Name: name, VMs: profiles[name].VMs, Here: []string{}}
		for _, vm := range p.VMs {
			if _, ok := vms[vm]; ok {
				p.Here = append(p.Here, vm)
			}
		}
		out = append(out, p)
	}
	writeJSON(w, http.StatusOK, map[string]any{"profiles": out, "host": s.opts.Queue.Host()})
	return nil
}

// listHosts is GET /v1/hosts: the hosts sharing the queue, their last
// heartbeat, and whether the others think them alive.
func (s *Server) listHosts(w http.ResponseWriter, r *http.Request) error {
	hosts, err := s.opts.Queue.Hosts(r.Context())
	if err != nil {
		return err
	}
	if hosts == nil {
		hosts = []queue.Host{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"host": s.opts.Queue.Host(), "dead_after": s.opts.Queue.DeadAfter().String(), "hosts": hosts})
	return nil
}
