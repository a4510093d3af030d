package api

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sandboxhq/sandbox/core/queue"
)

// submit is POST /v1/tasks: a multipart form with optionally "profile"
// (repeatable), "vm" and "priority", then the sample in the field "file",
// last. The sample goes to the queue as it arrives, hashed on the way and
// never whole in memory; the request is checked before a byte of it is
// stored. At most max_uploads are read at once; an upload is bounded by
// max_sample_size and upload_timeout, and cut when it stops arriving for
// read_timeout. Nothing is queued unless the whole request is valid.
func (s *Server) submit(w http.ResponseWriter, r *http.Request) (err error) {
	defer func() {
		if err != nil {
			refuseBody(w) // whatever is left of the upload is not read
		}
	}()
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		return errorf(http.StatusUnsupportedMediaType, "bad_request",
			"send the sample as multipart/form-data with the field \"file\" (curl -F file=@sample.exe)")
	}
	if r.ContentLength > s.opts.Server.MaxSampleSize+formOverhead {
		return errorf(http.StatusRequestEntityTooLarge, "too_large",
			"the request (%d bytes) is larger than max_sample_size (%d bytes)%s", r.ContentLength, s.opts.Server.MaxSampleSize, raiseTheLimit)
	}
	release, err := s.uploadSlot(w, r)
	if err != nil {
		return err
	}
	defer release()
	body := s.stallGuard(w, r)
	// The form's other fields are small; the bound covers them too.
	r.Body = http.MaxBytesReader(w, body, s.opts.Server.MaxSampleSize+formOverhead)
	mr, err := r.MultipartReader()
	if err != nil {
		return errorf(http.StatusBadRequest, "bad_request", "not a multipart form: %v; %s", err, wellFormed)
	}
	var req queue.Request
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return errorf(http.StatusBadRequest, "bad_request", "no sample: send it in the form field \"file\"")
		}
		if err != nil {
			return s.readError(err, "reading the form")
		}
		switch part.FormName() {
		case "file":
			sample := &sampleReader{part: part, form: mr, left: s.opts.Server.MaxSampleSize}
			t, err := s.opts.Queue.Submit(r.Context(), part.FileName(), sample, req)
			if err != nil {
				return s.submitError(err)
			}
			s.uploaded(w)
			w.Header().Set("Location", "/v1/tasks/"+t.ID)
			writeJSON(w, http.StatusAccepted, t)
			return nil
		case "profile", "vm", "priority":
			v, err := io.ReadAll(io.LimitReader(part, 4096))
			if err != nil {
				return s.readError(err, "reading the form")
			}
			if err := parseField(&req, part.FormName(), strings.TrimSpace(string(v))); err != nil {
				return err
			}
		default:
			return errorf(http.StatusBadRequest, "bad_request", "unknown form field %q; the fields are profile, vm, priority and file, last", part.FormName())
		}
	}
}

// sampleReader is the form's file part as the queue reads it: at most
// max_sample_size bytes, and, once it ends, the end of the form, so that
// a field sent after the file (which would have changed the request the
// queue already checked) refuses the submission before it is stored.
type sampleReader struct {
	part *multipart.Part
	form *multipart.Reader
	left int64
}

// Why a sample was not taken whole; the queue returns them wrapped.
var (
	errTooLarge   = errors.New("larger than max_sample_size")
	errFieldAfter = errors.New("a field after the file")
	errSecondFile = errors.New("a second file")
	errFormBroken = errors.New("the form does not end after the file")
)

// uploadError is a failure to read the upload itself (the client's
// side), apart from the queue's own failures.
type uploadError struct{ err error }

func (e *uploadError) Error() string { return e.err.Error() }
func (e *uploadError) Unwrap() error { return e.err }

func (s *sampleReader) Read(p []byte) (int, error) {
	if int64(len(p)) > s.left+1 {
		p = p[:s.left+1]
	}
	n, err := s.part.Read(p)
	if int64(n) > s.left {
		return 0, errTooLarge
	}
	s.left -= int64(n)
	if err != nil && !errors.Is(err, io.EOF) {
		return n, &uploadError{err}
	}
	if err == nil {
		return n, nil
	}
	next, ferr := s.form.NextPart()
	switch {
	case errors.Is(ferr, io.EOF):
		return n, io.EOF
	case ferr != nil:
		return n, fmt.Errorf("%w: %w", errFormBroken, ferr)
	case next.FormName() == "file":
		return n, errSecondFile
	default:
		return n, fmt.Errorf("%w %q", errFieldAfter, next.FormName())
	}
}

// submitError turns what the queue answered, or what reading the upload
// for it met, into the API's errors.
func (s *Server) submitError(err error) error {
	switch {
	case errors.Is(err, errTooLarge):
		return errorf(http.StatusRequestEntityTooLarge, "too_large", "the sample is larger than max_sample_size (%d bytes)%s", s.opts.Server.MaxSampleSize, raiseTheLimit)
	case errors.Is(err, errSecondFile):
		return errorf(http.StatusBadRequest, "bad_request", "one sample per task: the form has two \"file\" fields")
	case errors.Is(err, errFieldAfter):
		return errorf(http.StatusBadRequest, "bad_request",
			"the form has %v: send profile, vm and priority before the file, which comes last (curl -F profile=NAME -F file=@sample.exe)",
			strings.TrimPrefix(err.Error(), "receive the sample: "))
	case errors.Is(err, errFormBroken):
		return errorf(http.StatusBadRequest, "bad_request", "%v; %s", err, wellFormed)
	}
	var ue *uploadError
	if errors.As(err, &ue) {
		return s.readError(ue.err, "reading the sample")
	}
	return err
}

// raiseTheLimit ends a 413: what the service's operator can do about it.
const raiseTheLimit = "; the service's operator can raise [server] max_sample_size, up to 1 GiB"

// formOverhead bounds what a submission's form holds besides the sample:
// its boundaries, headers and small fields.
const formOverhead = 1 << 20

// parseField reads one of the submission's small fields into req. An
// explicit value is held to the rules: priority 1 to 4 (0 is not "the
// default"), and every name of a profile list non-empty.
func parseField(req *queue.Request, field, val string) error {
	switch field {
	case "profile":
		for p := range strings.SplitSeq(val, ",") {
			p = strings.TrimSpace(p)
			if p == "" {
				return errorf(http.StatusBadRequest, "unknown_profile",
					"profile %q names an empty profile: give names separated by commas, or leave the field out for every profile", val)
			}
			req.Profiles = append(req.Profiles, p)
		}
	case "vm":
		req.VM = val
	case "priority":
		n, err := strconv.Atoi(val)
		if err != nil || n < 1 || n > 4 {
			return errorf(http.StatusBadRequest, "bad_priority", "priority %q: want 1 (first) to 4 (last), or leave it out for 2", val)
		}
		req.Priority = n
	}
	return nil
}

// uploadSlot waits, up to read_timeout, for one of the max_uploads slots;
// a request still waiting then is answered 503, to try again later.
func (s *Server) uploadSlot(w http.ResponseWriter, r *http.Request) (release func(), err error) {
	wait := time.NewTimer(s.opts.Server.ReadTimeout)
	defer wait.Stop()
	select {
	case s.uploads <- struct{}{}:
		return func() { <-s.uploads }, nil
	case <-r.Context().Done():
		return nil, r.Context().Err()
	case <-wait.C:
		w.Header().Set("Retry-After", "5")
		refuseBody(w)
		return nil, errorf(http.StatusServiceUnavailable, "busy",
			"%d uploads are being read already (max_uploads); try again in a few seconds", s.opts.Server.MaxUploads)
	}
}

// stallGuard moves the connection's deadlines for an upload: the body may
// take up to upload_timeout whole, but is cut when no byte of it arrives
// for read_timeout; the answer's write deadline moves past the upload.
func (s *Server) stallGuard(w http.ResponseWriter, r *http.Request) io.ReadCloser {
	c := s.opts.Server
	rc := http.NewResponseController(w)
	end := time.Now().Add(c.UploadTimeout)
	_ = rc.SetWriteDeadline(end.Add(c.WriteTimeout))
	g := &stallReader{ReadCloser: r.Body, rc: rc, idle: c.ReadTimeout, end: end}
	g.extend()
	return g
}

// uploaded gives the answer to a finished upload its own write_timeout.
func (s *Server) uploaded(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.opts.Server.WriteTimeout))
}

// stallReader moves the read deadline forward as the body arrives.
type stallReader struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	end  time.Time
	// last is when the deadline was last moved: moving it at most every
	// few milliseconds costs nothing at any upload speed.
	last time.Time
}

func (g *stallReader) extend() {
	now := time.Now()
	g.last = now
	d := now.Add(g.idle)
	if d.After(g.end) {
		d = g.end
	}
	_ = g.rc.SetReadDeadline(d)
}

func (g *stallReader) Read(p []byte) (int, error) {
	n, err := g.ReadCloser.Read(p)
	// Not at the body's end: net/http has then cleared the deadline and
	// begun its own read, which would cancel the request's context at the
	// deadline while the queue still stores the sample.
	if n > 0 && err == nil && time.Since(g.last) > g.idle/100 {
		g.extend()
	}
	return n, err
}

// readError names what went wrong reading an upload: too large (413), cut
// for stalling or for taking longer than upload_timeout (408), or a
// malformed form (400).
func (s *Server) readError(err error, doing string) error {
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		return errorf(http.StatusRequestEntityTooLarge, "too_large", "the request is larger than max_sample_size (%d bytes)%s", s.opts.Server.MaxSampleSize, raiseTheLimit)
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		return errorf(http.StatusRequestTimeout, "timeout",
			"%s: the upload stopped arriving for read_timeout (%s) or took longer than upload_timeout (%s); "+
				"send it again, from a faster link, or ask the operator to raise [server] upload_timeout",
			doing, s.opts.Server.ReadTimeout, s.opts.Server.UploadTimeout)
	}
	return errorf(http.StatusBadRequest, "bad_request", "%s: %v; %s", doing, err, wellFormed)
}

// wellFormed ends the refusal of a malformed form: what a client should
// send instead.
const wellFormed = "send a multipart/form-data body with the sample in the field \"file\", last (curl -F file=@sample.exe)"

func (s *Server) getTask(w http.ResponseWriter, r *http.Request) error {
	t, err := s.opts.Queue.Task(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, t)
	return nil
}

// getReport is GET /v1/tasks/{id}/report: the task's report.json, from the
// database, whichever host ran it.
func (s *Server) getReport(w http.ResponseWriter, r *http.Request) error {
	t, err := s.opts.Queue.Task(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	if t.Report == nil {
		return errorf(http.StatusNotFound, "not_found", "task %s is %s: its report is written when it ends", t.ID, t.State)
	}
	writeJSON(w, http.StatusOK, t.Report)
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

func summarize(t *queue.Summary) taskSummary {
	s := taskSummary{ID: t.ID, Name: t.Sample.Name, SHA256: t.Sample.SHA256, Profiles: []string{}, State: t.State,
		Verdict: string(t.Verdict), Created: t.Created, Finished: t.Finished}
	for _, a := range t.Analyses {
		s.Profiles = append(s.Profiles, a.Profile)
	}
	return s
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
	tasks, err := s.opts.Queue.Summaries(r.Context(), state, limit)
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

// getArtifact is GET /v1/tasks/{id}/artifacts/{profile}/{name}: one
// artifact of a task's analysis, from the queue's database (any host
// serves it), or, for one larger than [queue] artifact_limit, from the
// disk of the host that ran the task, which alone serves it.
func (s *Server) getArtifact(w http.ResponseWriter, r *http.Request) error {
	q := s.opts.Queue
	a, err := q.Artifact(r.Context(), r.PathValue("id"), r.PathValue("profile"), r.PathValue("name"))
	if err != nil {
		return err
	}
	if !a.InDatabase && a.Host != q.Host() {
		return errorf(http.StatusNotFound, "not_found", "artifact %s of task %s (%d bytes) is larger than [queue] artifact_limit: "+
			"it is kept only on host %s, which ran the task; ask that host", a.Name, a.Task, a.Size, a.Host)
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(a.Size, 10))
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": a.Name}))
	h.Set("ETag", `"`+a.SHA256+`"`)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "sandbox")
	if r.Method == http.MethodHead {
		return nil
	}
	if err := q.CopyArtifact(r.Context(), a, &moving{w: w, rc: http.NewResponseController(w), idle: s.opts.Server.WriteTimeout}); err != nil {
		// The answer has begun: cut it, so that the client sees a broken
		// download rather than a short one.
		s.log.Error("artifact download cut", "task", a.Task, "artifact", a.Name, "error", err)
		panic(http.ErrAbortHandler)
	}
	return nil
}

// moving writes a download, giving each write its own write_timeout: a
// large download takes as long as it needs while the client keeps taking
// it, and is cut when it stops.
type moving struct {
	w    io.Writer
	rc   *http.ResponseController
	idle time.Duration
}

func (m *moving) Write(p []byte) (int, error) {
	_ = m.rc.SetWriteDeadline(time.Now().Add(m.idle))
	return m.w.Write(p)
}
