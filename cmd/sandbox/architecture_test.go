package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const module = "github.com/sandboxhq/sandbox"

// TestArchitectureTableMatchesTheCode holds docs/architecture.md's table of
// packages to the code: every package of the module has a row, every row
// is a package, and its last column is exactly what it imports of ours.
func TestArchitectureTableMatchesTheCode(t *testing.T) {
	t.Parallel()
	root := filepath.Join("..", "..")
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, "./...")
	cmd.Dir = root
	out, err := cmd.Output()
	require.NoError(t, err)
	code := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		pkg := strings.TrimPrefix(strings.TrimPrefix(fields[0], module), "/")
		var ours []string
		for _, imp := range fields[1:] {
			if imp == module || strings.HasPrefix(imp, module+"/") {
				ours = append(ours, strings.TrimPrefix(strings.TrimPrefix(imp, module), "/"))
			}
		}
		slices.Sort(ours)
		code[pkg] = ours
	}

	f, err := os.Open(filepath.Join(root, "docs", "architecture.md"))
	require.NoError(t, err)
	defer f.Close()
	row := regexp.MustCompile("^\\| `([^`]+)` \\|.*\\| ([^|]+) \\|$")
	tick := regexp.MustCompile("`([^`]+)`")
	docs := map[string][]string{}
	inTable := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			inTable = line == "## Packages"
		case inTable:
			if m := row.FindStringSubmatch(line); m != nil {
				var imports []string
				for _, i := range tick.FindAllStringSubmatch(m[2], -1) {
					imports = append(imports, i[1])
				}
				slices.Sort(imports)
				docs[m[1]] = imports
			}
		}
	}
	require.NoError(t, sc.Err())
	require.NotEmpty(t, docs, "no table under ## Packages")
	for pkg, imports := range code {
		documented, ok := docs[pkg]
		if !assert.True(t, ok, "package %s has no row in docs/architecture.md", pkg) {
			continue
		}
		assert.Equal(t, imports, documented, "what %s imports of ours, by docs/architecture.md", pkg)
	}
	for pkg := range docs {
		_, ok := code[pkg]
		assert.True(t, ok, "docs/architecture.md has a row for %s, which is no package", pkg)
	}
}
