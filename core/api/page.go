package api

import (
	"context"
	"html/template"
	"net/http"
	"time"

	"github.com/sandboxhq/sandbox/core/queue"
)

// The status page is rendered on the server and refreshes itself: no
// script, no build step, nothing for a browser to get wrong. It shows this
// host's VMs with the step each is in, and the latest tasks of every host.

var pageTemplate = template.Must(template.New("page").Funcs(template.FuncMap{
	"since": func(t time.Time) string { return time.Since(t).Round(100 * time.Millisecond).String() },
	"ago": func(t time.Time) string {
		return time.Since(t).Round(time.Second).String() + " ago"
	},
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="2">
<link rel="icon" href="data:,">
<title>sandbox on {{.Host}}</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .3em .8em; border-bottom: 1px solid #ddd; }
th { background: #f4f4f4; }
.malicious { color: #b00; font-weight: bold; } .clean { color: #070; } .error, .failed { color: #a60; }
.quarantined { color: #b00; } .muted { color: #888; }
</style>
</head>
<body>
<h1>sandbox on {{.Host}}</h1>
<p class="muted">Tasks: {{range $i, $s := .States}}{{if $i}}, {{end}}{{index $.Counts $s}} {{$s}}{{end}}. This page refreshes every 2 seconds.</p>
<h2>VMs</h2>
<table id="vms">
<tr><th>VM</th><th>Plugin</th><th>Power</th><th>Step</th><th>Sample</th><th>Profile</th><th>For</th><th>Note</th></tr>
{{range .VMs}}<tr>
<td>{{.Name}}</td><td>{{.Plugin}}</td>
<td>{{if .Status}}{{.Status.Power}}/{{.Status.Lock}}{{else}}<span class="error">{{.StatusError}}</span>{{end}}</td>
{{if and .Step (not .Step.Step.Final)}}<td>{{.Step.Step}}</td><td>{{.Step.Sample}}</td><td>{{.Step.Profile}}</td><td>{{since .Step.At}}</td>
{{else if .Step}}<td>idle</td><td class="muted">last: {{.Step.Sample}}</td><td class="muted">{{.Step.Profile}}</td><td>{{since .Step.At}}</td>
{{else}}<td>idle</td><td></td><td></td><td></td>{{end}}
<td>{{if .Quarantine}}<span class="quarantined">quarantined: {{.Quarantine.Reason}}</span>{{else if .OutOfService}}<span class="quarantined">out of service: {{.OutOfService}}</span>{{end}}</td>
</tr>
{{else}}<tr><td colspan="8" class="muted">This host has no VM.</td></tr>
{{end}}</table>
<h2>Latest tasks</h2>
<table id="tasks">
<tr><th>Task</th><th>Sample</th><th>Profiles</th><th>State</th><th>Verdict</th><th>Submitted</th></tr>
{{range .Tasks}}<tr>
<td>{{.ID}}</td><td>{{.Sample.Name}}</td><td>{{range $i, $p := .Profiles}}{{if $i}}, {{end}}{{$p}}{{end}}</td>
<td class="{{.State}}">{{.State}}</td><td class="{{.Verdict}}">{{.Verdict}}</td><td>{{ago .Created}}</td>
</tr>
{{else}}<tr><td colspan="6" class="muted">No task yet.</td></tr>
{{end}}</table>
</body>
</html>
`))

// pageData is what the page shows.
type pageData struct {
	Host   string
	VMs    []vmInfo
	Tasks  []*queue.Task
	Counts map[string]int
	States []string
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	data := pageData{Host: s.opts.Queue.Host(), VMs: s.vms(ctx), States: taskStates}
	var err error
	if data.Tasks, err = s.opts.Queue.Tasks(ctx, "", 20); err == nil {
		data.Counts, err = s.opts.Queue.Counts(ctx)
	}
	if err != nil {
		http.Error(w, "the queue's database did not answer: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pageTemplate.Execute(w, data); err != nil {
		s.log.Error("status page", "error", err)
	}
}
