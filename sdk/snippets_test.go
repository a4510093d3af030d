package sdk_test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A snippet of the docs is quoted from a file the build compiles (the
// example driver, an example test) when the line before its fence says so:
//
//	<!-- snippet: example-driver/driver.go -->
//
// (the path relative to docs/). Each paragraph of the snippet must then be
// lines of that file, in the file's order, the same but for a common
// indentation; a line "..." (or a comment that starts with "..."), like a
// blank line, ends a paragraph and stands for lines the snippet leaves out.
var snippetMark = regexp.MustCompile(`^<!-- snippet: (\S+) -->$`)

// snippet is one fenced code block of a document.
type snippet struct {
	line   int    // of the opening fence, 1-based
	lang   string // after the fence: go, toml, sh
	source string // the file it quotes, relative to docs/; "" for none
	body   []string
}

func readSnippets(t *testing.T, doc string) []snippet {
	t.Helper()
	f, err := os.Open(doc)
	require.NoError(t, err)
	defer f.Close()
	var out []snippet
	var cur *snippet
	prev := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case cur != nil && strings.HasPrefix(line, "```"):
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.body = append(cur.body, line)
		case strings.HasPrefix(line, "```"):
			cur = &snippet{line: n, lang: strings.TrimPrefix(line, "```")}
			if m := snippetMark.FindStringSubmatch(prev); m != nil {
				cur.source = m[1]
			}
		default:
			if m := snippetMark.FindStringSubmatch(line); m == nil && strings.Contains(line, "<!-- snippet:") {
				t.Errorf("%s:%d: a snippet mark must be alone on its line: <!-- snippet: PATH -->", doc, n)
			}
		}
		prev = line
	}
	require.NoError(t, sc.Err())
	require.Nil(t, cur, "%s: a fence is never closed", doc)
	return out
}

// elided reports whether a snippet line stands for lines left out.
func elided(line string) bool {
	l := strings.TrimSpace(line)
	for _, p := range []string{"...", "// ...", "# ..."} {
		if l == p || strings.HasPrefix(l, p+" ") {
			return true
		}
	}
	return false
}

// paragraphs splits a snippet at its blank and elided lines.
func paragraphs(body []string) [][]string {
	var out [][]string
	var cur []string
	for _, l := range body {
		if strings.TrimSpace(l) == "" || elided(l) {
			if len(cur) > 0 {
				out = append(out, cur)
			}
			cur = nil
			continue
		}
		cur = append(cur, strings.TrimRight(l, " \t"))
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// dedent removes the leading whitespace all lines share.
func dedent(lines []string) []string {
	common := ""
	for i, l := range lines {
		indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
		if i == 0 || !strings.HasPrefix(indent, common) {
			common = commonPrefix(common, indent, i == 0)
		}
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = strings.TrimPrefix(l, common)
	}
	return out
}

func commonPrefix(a, b string, first bool) string {
	if first {
		return b
	}
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return a[:n]
}

// find is the index of the first window of file at or after from whose
// lines, dedented, are para's, or -1.
func find(file []string, from int, para []string) int {
	want := strings.Join(dedent(para), "\n")
	for i := from; i+len(para) <= len(file); i++ {
		if strings.Join(dedent(file[i:i+len(para)]), "\n") == want {
			return i
		}
	}
	return -1
}

// nearest says which line of file looks most like line, for a message.
func nearest(file []string, line string) string {
	line = strings.TrimSpace(line)
	best, at := 0, -1
	for i, l := range file {
		l = strings.TrimSpace(l)
		n := 0
		for n < len(l) && n < len(line) && l[n] == line[n] {
			n++
		}
		if n > best {
			best, at = n, i
		}
	}
	if at < 0 {
		return "no line like it"
	}
	return fmt.Sprintf("line %d reads %q", at+1, strings.TrimSpace(file[at]))
}

// checkSnippet says how s no longer matches its file, or "".
func checkSnippet(s snippet, file []string) string {
	at := 0
	for _, para := range paragraphs(s.body) {
		i := find(file, at, para)
		if i >= 0 {
			at = i + len(para)
			continue
		}
		for _, l := range para {
			if find(file, 0, []string{l}) < 0 {
				return fmt.Sprintf("the file has no line %q (nearest: %s)", strings.TrimSpace(l), nearest(file, l))
			}
		}
		if find(file, 0, para) >= 0 {
			return fmt.Sprintf("the lines from %q come before those the snippet shows above them", strings.TrimSpace(para[0]))
		}
		return fmt.Sprintf("the file has the lines from %q, but not together as the snippet shows them", strings.TrimSpace(para[0]))
	}
	return ""
}

// Every Go snippet of docs/plugin-authoring.md is code the build compiles,
// quoted from the example driver (or an example test) and checked against
// it here, so a change to the driver that the page does not follow fails
// this test; so do snippets of other docs that say what they quote.
func TestDocSnippetsMatchTheFilesTheyQuote(t *testing.T) {
	docs, err := filepath.Glob("../docs/*.md")
	require.NoError(t, err)
	require.NotEmpty(t, docs)
	quoted := 0
	for _, doc := range docs {
		for _, s := range readSnippets(t, doc) {
			where := fmt.Sprintf("docs/%s:%d", filepath.Base(doc), s.line)
			if s.source == "" {
				if filepath.Base(doc) == "plugin-authoring.md" && s.lang == "go" {
					t.Errorf("%s: a Go snippet of the authoring guide must quote compiled code: "+
						"mark it <!-- snippet: example-driver/FILE.go --> and keep it in step with that file", where)
				}
				continue
			}
			data, err := os.ReadFile(filepath.Join("../docs", s.source))
			if !assert.NoError(t, err, "%s: the snippet quotes %s", where, s.source) {
				continue
			}
			quoted++
			if msg := checkSnippet(s, strings.Split(string(data), "\n")); msg != "" {
				t.Errorf("%s: the snippet no longer matches %s, which it quotes: %s", where, s.source, msg)
			}
		}
	}
	assert.GreaterOrEqual(t, quoted, 8, "the authoring guide's snippets are all quoted")
}

// The checker itself: a snippet that has drifted from its file fails, one
// that leaves lines out where it says so does not.
func TestASnippetThatDriftedFromItsFileIsCaught(t *testing.T) {
	file := strings.Split(`func New() *Driver {
	d := &Driver{locks: map[string]*vmLock{}}
	for name := range names {
		d.locks[name] = &vmLock{}
	}
	return d
}`, "\n")
	check := func(body string) string {
		return checkSnippet(snippet{body: strings.Split(body, "\n")}, file)
	}
	assert.Empty(t, check("func New() *Driver {\n\td := &Driver{locks: map[string]*vmLock{}}\n\t...\n\treturn d\n}"))
	assert.Empty(t, check("for name := range names {\n\td.locks[name] = &vmLock{}\n}"), "an indented part, dedented")
	assert.Contains(t, check("func New() *Driver {\n\td := &Driver{killed: map[string]int{}}\n\t...\n}"),
		`the file has no line "d := &Driver{killed: map[string]int{}}" (nearest: line 2 reads "d := &Driver{locks: map[string]*vmLock{}}")`)
	assert.Contains(t, check("\treturn d\n\t...\n\td := &Driver{locks: map[string]*vmLock{}}"), "come before")
	assert.Contains(t, check("func New() *Driver {\n\treturn d\n}"), "not together")
}
