package api

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sandboxhq/sandbox/core/config"
	"github.com/sandboxhq/sandbox/core/engine"
	"github.com/sandboxhq/sandbox/core/queue"
)

// The status page and the task pages are rendered on the server and
// refresh themselves: no script, no build step, nothing for a browser to
// get wrong. They read the database for the tasks and the engine's event
// stream for the VMs: never a hypervisor call per view, and never a
// report's output to draw a row. Unless [server] public_page is set, they
// need the token: a person signs in once with it (a cookie derived from
// it, which cannot call the API), a script sends it as for /v1.

//go:embed templates/*.html
var templates embed.FS

var pageTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"num":   func(f float64) string { return fmt.Sprintf("%.1f", f) },
	"since": func(t time.Time) string { return shortDuration(time.Since(t)) },
	"ago":   func(t time.Time) string { return shortDuration(time.Since(t)) + " ago" },
}).ParseFS(templates, "templates/*.html"))

// Page settings.
const (
	// pageWindow is how far back the page's timeline goes.
	pageWindow = 10 * time.Minute
	// pageTasks is how many of the latest tasks the page lists.
	pageTasks = 25
	// pageRefresh and taskRefresh are how often, in seconds, the page
	// and a running task's page reload themselves.
	pageRefresh = 5
	taskRefresh = 3
	// outputShown bounds the output a task page shows of each analysis;
	// report.json has all of it.
	outputShown = 16 << 10
	// sessionCookie holds a signed-in person's session.
	sessionCookie = "sandbox_session"
)

func (s *Server) pageRoutes() {
	s.mux.HandleFunc("GET /{$}", s.pageAuth(s.page))
	s.mux.HandleFunc("GET /tasks/{id}", s.pageAuth(s.taskPage))
	s.mux.HandleFunc("GET /tasks/{id}/report.json", s.pageAuth(s.pageReport))
	s.mux.HandleFunc("GET /tasks/{id}/artifacts/{profile}/{name}", s.pageAuth(s.pageArtifact))
	s.mux.HandleFunc("GET /login", s.loginPage)
	s.mux.HandleFunc("POST /login", s.login)
	s.mux.HandleFunc("POST /logout", s.logout)
}

// sessionValue is the session cookie's value for token: a MAC of a fixed
// text under the token, so that it survives a restart, ends when the
// token changes, and does not give the token away.
func sessionValue(token string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("sandbox status page session"))
	return hex.EncodeToString(m.Sum(nil))
}

// signedIn reports whether r carries the page's session cookie.
func (s *Server) signedIn(r *http.Request) bool {
	c, err := r.Cookie(sessionCookie)
	return err == nil && subtle.ConstantTimeCompare([]byte(c.Value), []byte(s.session)) == 1
}

// pageAuth lets a request to a page through when the page is public, or
// with the token or a session; a browser without either is sent to sign
// in.
func (s *Server) pageAuth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		secureHeaders(w)
		if s.opts.Server.PublicPage || s.bearer(r) || s.signedIn(r) {
			h(w, r)
			return
		}
		http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
	}
}

// secureHeaders keeps the pages from running anything, being framed, or
// telling other sites where a link came from.
func secureHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
}

// localPath is next if it is a path of this site, else "/".
func localPath(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

type loginData struct {
	Title, Host, Next, Error string
	Refresh                  int
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	secureHeaders(w)
	if s.opts.Server.PublicPage || s.signedIn(r) {
		http.Redirect(w, r, localPath(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	s.render(w, http.StatusOK, "login", loginData{Title: "sandbox: sign in", Host: s.opts.Queue.Host(), Next: localPath(r.URL.Query().Get("next"))})
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	secureHeaders(w)
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "a sign-in is a small form: "+err.Error(), http.StatusBadRequest)
		return
	}
	next := localPath(r.PostForm.Get("next"))
	if subtle.ConstantTimeCompare([]byte(strings.TrimSpace(r.PostForm.Get("token"))), []byte(s.opts.Server.Token)) != 1 {
		s.render(w, http.StatusUnauthorized, "login", loginData{Title: "sandbox: sign in", Host: s.opts.Queue.Host(), Next: next,
			Error: "That is not the service's token."})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: s.session, Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int((30 * 24 * time.Hour).Seconds())})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	secureHeaders(w)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// render executes a page's template into a buffer first, so that a
// failure is a clean 500 rather than half a page.
func (s *Server) render(w http.ResponseWriter, status int, name string, data any) {
	var b strings.Builder
	if err := pageTemplates.ExecuteTemplate(&b, name, data); err != nil {
		s.log.Error("render a page", "page", name, "error", err)
		http.Error(w, "the page could not be drawn: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

// pageData is what the status page shows.
type pageData struct {
	Title, Host string
	Now         time.Time
	Refresh     int
	SignedIn    bool
	Counts      []stateCount
	Hosts       []hostRow
	Profiles    []profileRow
	VMs         []vmRow
	Timeline    *timeline
	WindowText  string
	Tasks       []taskRow
}

// hostRow is a host sharing the queue.
type hostRow struct {
	Name, Class, Liveness string
	Heartbeat, Started    time.Time
	Here                  bool
	VMs, Profiles         []string
}

type stateCount struct {
	State string
	N     int
}

type profileRow struct {
	Name            string
	Depth           int
	Here, Elsewhere []string
}

// vmRow is a VM of this host: the step it is in (or idle), the task, and
// a note for anything wrong with it.
type vmRow struct {
	Name, Plugin          string
	Profiles              []string
	Step, StepClass       string
	Since                 time.Time
	Task, Sample, Profile string
	Notes                 []note
}

type note struct{ Class, Text string }

// taskRow is a task in the page's list.
type taskRow struct {
	ID, Name, State, Verdict string
	Created                  time.Time
	Took                     string
	Analyses                 []analysisBrief
}

// analysisBrief is one analysis of a task in the list.
type analysisBrief struct {
	Profile, Class, Text, Detail string
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	data, err := s.pageData(ctx, time.Now())
	if err != nil {
		http.Error(w, databaseAwayText(err), http.StatusServiceUnavailable)
		return
	}
	data.SignedIn = s.signedIn(r)
	s.render(w, http.StatusOK, "page", data)
}

// pageData gathers the status page: three queries of the database (the
// counts, the queue's depth, the latest tasks without their reports),
// the event stream's cached state, and the quarantine and lease records
// of the state directory; nothing asks a hypervisor.
func (s *Server) pageData(ctx context.Context, now time.Time) (*pageData, error) {
	q := s.opts.Queue
	d := &pageData{Title: "sandbox on " + q.Host(), Host: q.Host(), Now: now, Refresh: pageRefresh,
		WindowText: fmt.Sprintf("%d minutes", int(pageWindow.Minutes()))}
	counts, err := q.Counts(ctx)
	if err != nil {
		return nil, err
	}
	for _, st := range taskStates {
		d.Counts = append(d.Counts, stateCount{State: st, N: counts[st]})
	}
	depth, err := q.Depth(ctx)
	if err != nil {
		return nil, err
	}
	tasks, err := q.Summaries(ctx, "", pageTasks)
	if err != nil {
		return nil, err
	}
	hosts, err := q.Hosts(ctx)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		row := hostRow{Name: h.Name, Class: "done", Liveness: "alive", Heartbeat: h.Heartbeat, Started: h.Started,
			Here: h.Name == q.Host(), VMs: h.VMs, Profiles: h.Profiles}
		if !h.Alive {
			row.Class, row.Liveness = "failed", "dead: its running analyses were taken over"
		}
		d.Hosts = append(d.Hosts, row)
	}
	vms, profiles := q.VMs(), q.Profiles()
	for _, name := range slices.Sorted(maps.Keys(profiles)) {
		row := profileRow{Name: name, Depth: depth[name]}
		for _, vm := range profiles[name].VMs {
			if _, ok := vms[vm]; ok {
				row.Here = append(row.Here, vm)
			} else {
				row.Elsewhere = append(row.Elsewhere, vm)
			}
		}
		d.Profiles = append(d.Profiles, row)
	}
	latest := s.opts.Events.Latest()
	names := slices.Sorted(maps.Keys(vms))
	unusable := q.Unusable()
	for _, name := range names {
		d.VMs = append(d.VMs, s.vmRow(ctx, name, profiles, latest, unusable))
	}
	d.Timeline = vmTimeline(names, s.opts.Events.History(now.Add(-pageWindow)), now.Add(-pageWindow), now)
	d.Timeline.Label = "the steps of each VM over the last " + d.WindowText
	running := runningByTask(latest)
	for _, t := range tasks {
		d.Tasks = append(d.Tasks, taskRowOf(t, running))
	}
	return d, nil
}

func (s *Server) vmRow(ctx context.Context, name string, profiles map[string]config.Profile, latest map[string]engine.Event, unusable map[string]string) vmRow {
	vm := s.opts.Queue.VMs()[name]
	row := vmRow{Name: name, Plugin: vm.Plugin, Step: "idle", StepClass: "muted"}
	for _, p := range slices.Sorted(maps.Keys(profiles)) {
		if slices.Contains(profiles[p].VMs, name) {
			row.Profiles = append(row.Profiles, p)
		}
	}
	if e, ok := latest[name]; ok {
		row.Since, row.Task, row.Sample, row.Profile = e.At, e.Task, e.Sample, e.Profile
		if !e.Step.Final() {
			row.Step, row.StepClass = string(e.Step), "running"
		}
		if e.Step == engine.StepFailed {
			row.Notes = append(row.Notes, note{"warn", "its last task failed: " + clip(e.Detail, 200)})
		}
	}
	if qe, ok, err := s.opts.Lifecycle.Quarantined(ctx, vm); err == nil && ok {
		row.Notes = append(row.Notes, note{"bad", fmt.Sprintf("quarantined since %s: %s; POST /v1/vms/%s/cleanup once it is fixed",
			qe.Since.Local().Format("Jan 2 15:04"), qe.Reason, name)})
	} else if err != nil {
		row.Notes = append(row.Notes, note{"warn", "quarantine unreadable: " + err.Error()})
	}
	if why, ok := unusable[name]; ok {
		row.Notes = append(row.Notes, note{"bad", "out of service: " + why})
	}
	if s.opts.State != nil {
		if l, err := s.opts.State.Lease(vm.Key()); err == nil && l != nil {
			switch {
			case !l.Live:
				row.Notes = append(row.Notes, note{"bad", fmt.Sprintf("left behind by a process that died holding it (pid %d, %s, since %s): "+
					"the next task cleans it first, or POST /v1/vms/%s/reconcile now", l.PID, l.Command, l.Since.Local().Format("Jan 2 15:04"), name)})
			case l.PID != os.Getpid():
				row.Notes = append(row.Notes, note{"warn", fmt.Sprintf("held by another process (pid %d, %s) since %s",
					l.PID, l.Command, l.Since.Local().Format("15:04:05"))})
			}
		}
	}
	return row
}

// runningByTask indexes the analyses under way on this host by task and
// profile.
func runningByTask(latest map[string]engine.Event) map[string]engine.Event {
	out := map[string]engine.Event{}
	for _, e := range latest {
		if !e.Step.Final() {
			out[e.Task+"\x00"+e.Profile] = e
		}
	}
	return out
}

func taskRowOf(t *queue.Summary, running map[string]engine.Event) taskRow {
	row := taskRow{ID: t.ID, Name: t.Sample.Name, State: t.State, Verdict: string(t.Verdict), Created: t.Created}
	if t.State == queue.StateCancelled {
		row.Verdict = "" // nobody wants one any more: cancelled says it all
	}
	if t.Finished != nil {
		row.Took = shortDuration(t.Finished.Sub(t.Created))
	}
	for _, b := range t.Analyses {
		a := analysisBrief{Profile: b.Profile, Class: b.State, Text: b.State}
		switch b.State {
		case queue.StateDone:
			a.Class, a.Text = string(b.Verdict), string(b.Verdict)
		case queue.StateFailed:
			if b.FailedStep != "" {
				a.Detail = fmt.Sprintf("at %s: %s", b.FailedStep, clip(b.Error, 160))
			} else {
				a.Detail = clip(b.Error, 160)
			}
		case queue.StateCancelled:
			a.Detail = clip(b.Error, 160)
		case queue.StateRunning:
			a.Class = "running"
			if b.Step != "" {
				a.Text = b.Step
			}
			if e, ok := running[t.ID+"\x00"+b.Profile]; ok {
				a.Text, a.Detail = string(e.Step), fmt.Sprintf("on %s for %s", e.VM, shortDuration(time.Since(e.At)))
			} else if b.VM != "" {
				a.Detail = "on " + b.VM
			}
		case queue.StateQueued:
			a.Text = "waiting"
		}
		if b.Attempt > 1 {
			a.Detail = strings.TrimSpace(fmt.Sprintf("%s (attempt %d)", a.Detail, b.Attempt))
		}
		if b.Host != "" && b.State != queue.StateQueued {
			where := b.Host
			if b.VM != "" && b.State != queue.StateRunning {
				where = b.VM + " on " + b.Host
			}
			a.Detail = strings.TrimSpace(a.Detail + " (" + where + ")")
		}
		row.Analyses = append(row.Analyses, a)
	}
	return row
}

// clip shortens s to at most n bytes, on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// taskPageData is what a task's page shows.
type taskPageData struct {
	Title, Host string
	Refresh     int
	Task        *queue.Task
	Took        string
	Timeline    *timeline
	Analyses    []analysisView
}

// analysisView is one analysis on a task's page.
type analysisView struct {
	Profile, State, StateClass, Verdict string
	Host, VM, Plugin                    string
	Running                             bool
	Step                                string
	Since                               time.Time
	FailedStep, Error, Rule             string
	ExitCode                            string
	Quarantined, CleanupError           string
	Skipped                             []engine.SkippedVM
	Lost                                []string
	Transitions                         []transitionRow
	Artifacts                           []artifactRow
	Stdout, Stderr                      string
}

type transitionRow struct {
	Step, Class, Took, Detail string
	At                        time.Time
}

type artifactRow struct {
	engine.Artifact
	Link string
}

func (s *Server) taskPage(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	t, err := s.opts.Queue.Task(ctx, r.PathValue("id"))
	var ie *queue.InputError
	if errors.As(err, &ie) {
		http.Error(w, ie.Msg, http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, databaseAwayText(err), http.StatusServiceUnavailable)
		return
	}
	s.render(w, http.StatusOK, "task", s.taskPageData(t, time.Now()))
}

func (s *Server) taskPageData(t *queue.Task, now time.Time) *taskPageData {
	d := &taskPageData{Title: "task " + t.ID + ": " + t.Sample.Name, Host: s.opts.Queue.Host(), Task: t}
	end := now
	if t.Finished != nil {
		end = *t.Finished
		d.Took = shortDuration(t.Finished.Sub(t.Created))
	} else {
		d.Refresh = taskRefresh
	}
	running := runningByTask(s.opts.Events.Latest())
	var history map[string][]engine.Event
	var lanes []analysisLane
	for _, p := range t.Profiles {
		a := analysisView{Profile: p}
		var transitions []engine.Transition
		if r := resultOf(t, p); r != nil {
			a.State, a.StateClass, a.Verdict, a.Host = string(r.State), string(r.State), string(r.Verdict), r.Host
			a.VM, a.Plugin, a.Rule, a.Error, a.Quarantined = r.VM, r.Plugin, r.Rule, r.Error, r.Quarantined
			a.Skipped = r.Skipped
			if r.FailedStep != "" && r.State == engine.StepFailed {
				a.FailedStep = string(r.FailedStep)
			}
			if r.ExitCode != nil {
				a.ExitCode = fmt.Sprint(*r.ExitCode)
			}
			if r.Cleanup != nil && r.Cleanup.Error != "" {
				a.CleanupError = r.Cleanup.Error
			}
			a.Stdout, a.Stderr = clipOutput(r.Stdout), clipOutput(r.Stderr)
			for _, art := range r.Artifacts {
				row := artifactRow{Artifact: art}
				if art.Error == "" && art.Path != "" {
					row.Link = "/tasks/" + url.PathEscape(t.ID) + "/artifacts/" + url.PathEscape(p) + "/" + url.PathEscape(path.Base(art.Path))
				}
				a.Artifacts = append(a.Artifacts, row)
			}
			transitions = r.Transitions
		} else if e, ok := running[t.ID+"\x00"+p]; ok {
			// Under way on this host: the event stream knows its every step.
			a.State, a.StateClass, a.Running, a.Step, a.Since, a.VM, a.Host = "running", "running", true, string(e.Step), e.At, e.VM, s.opts.Queue.Host()
			if history == nil {
				history = s.opts.Events.History(t.Created)
			}
			for _, h := range history[e.VM] {
				if h.Task == t.ID && h.Profile == p {
					transitions = append(transitions, engine.Transition{Step: h.Step, At: h.At, Detail: h.Detail})
				}
			}
		} else if an := analysisOf(t, p); an != nil && an.State == queue.StateRunning {
			// Under way on another host: its row says where.
			a.State, a.StateClass, a.Running, a.Step, a.VM, a.Host = "running", "running", true, an.Step, an.VM, an.Host
		} else {
			a.State, a.StateClass = "waiting", "queued"
			if an != nil && an.State != queue.StateQueued {
				a.State, a.StateClass = an.State, an.State
			}
		}
		if an := analysisOf(t, p); an != nil {
			for _, l := range an.Lost {
				a.Lost = append(a.Lost, fmt.Sprintf("attempt %d lost with host %s at %s: %s", l.Attempt, l.Host,
					l.At.Local().Format("15:04:05"), l.Why))
			}
		}
		for i, tr := range transitions {
			row := transitionRow{Step: string(tr.Step), Class: string(tr.Step), At: tr.At, Detail: tr.Detail}
			if i+1 < len(transitions) {
				row.Took = shortDuration(transitions[i+1].At.Sub(tr.At))
			} else if !tr.Step.Final() {
				row.Took = shortDuration(now.Sub(tr.At)) + " so far"
			}
			if !tr.Step.Final() {
				row.Class = "muted"
			}
			a.Transitions = append(a.Transitions, row)
		}
		lanes = append(lanes, analysisLane{Label: p, Transitions: transitions})
		d.Analyses = append(d.Analyses, a)
	}
	d.Timeline = taskTimeline(lanes, t.Created, end)
	d.Timeline.Label = "the steps of each analysis of task " + t.ID
	return d
}

// analysisOf is the task's analysis with profile.
func analysisOf(t *queue.Task, profile string) *queue.Analysis {
	for i := range t.Analyses {
		if t.Analyses[i].Profile == profile {
			return &t.Analyses[i]
		}
	}
	return nil
}

// resultOf is the task's result with profile, if it has ended.
func resultOf(t *queue.Task, profile string) *queue.HostResult {
	for i := range t.Results {
		if t.Results[i].Profile == profile {
			return &t.Results[i]
		}
	}
	return nil
}

// clipOutput bounds the output shown on a page.
func clipOutput(s string) string {
	if len(s) <= outputShown {
		return s
	}
	return clip(s, outputShown) + fmt.Sprintf("\n… %d more bytes in report.json", len(s)-outputShown)
}

// pageArtifact is an artifact's download, for a signed-in person: the
// API's, its refusals in plain text.
func (s *Server) pageArtifact(w http.ResponseWriter, r *http.Request) {
	err := s.getArtifact(w, r)
	var ae *apiError
	var ie *queue.InputError
	switch {
	case err == nil:
	case errors.As(err, &ae):
		http.Error(w, ae.msg, ae.status)
	case errors.As(err, &ie):
		http.Error(w, ie.Msg, http.StatusNotFound)
	default:
		if why, away := s.databaseAway(err); away {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		s.log.Error("artifact download", "error", err)
		http.Error(w, err.Error()+" (the service's log has it too)", http.StatusInternalServerError)
	}
}

// databaseAwayText is a page's answer when the queue's database did not
// answer: what happened, and when to look again.
func databaseAwayText(err error) string {
	return "the queue's database did not answer: " + err.Error() + "\nreload this page once /readyz answers ready"
}

// pageReport is a task's report.json, for a signed-in person.
func (s *Server) pageReport(w http.ResponseWriter, r *http.Request) {
	t, err := s.opts.Queue.Task(r.Context(), r.PathValue("id"))
	var ie *queue.InputError
	if errors.As(err, &ie) {
		http.Error(w, ie.Msg, http.StatusNotFound)
		return
	}
	if err != nil {
		http.Error(w, databaseAwayText(err), http.StatusServiceUnavailable)
		return
	}
	if t.Report == nil {
		http.Error(w, "the task has not ended: its report is written when it does", http.StatusNotFound)
		return
	}
	writeJSON(w, http.StatusOK, t.Report)
}
