package configfile

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Line returns the 1-based line where key (a full dotted path) is set or
// its table is opened. A key that is not written anywhere (a default, a
// key inside an inline table) reports the line of its closest written
// parent; 0 means the document does not mention it at all.
//
// The toml package keeps key positions private, so this scans the text:
// table headers set the current prefix and "key = value" lines name keys
// below it. Multi-line strings are skipped.
func (d Document) Line(key []string) int {
	lines := d.index()
	for k := toml.Key(key); len(k) > 0; k = k[:len(k)-1] {
		if n, ok := lines[k.String()]; ok {
			return n
		}
	}
	return 0
}

func (d Document) index() map[string]int {
	lines := map[string]int{}
	var table toml.Key
	var inMulti string
	sc := bufio.NewScanner(bytes.NewReader(d.Data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if inMulti != "" {
			if strings.Count(line, inMulti)%2 == 1 {
				inMulti = ""
			}
			continue
		}
		switch {
		case line == "" || line[0] == '#':
			continue
		case line[0] == '[':
			inner := strings.TrimLeft(line, "[")
			parts, _, ok := parseKey(inner)
			if !ok {
				continue
			}
			table = parts
			if _, seen := lines[table.String()]; !seen {
				lines[table.String()] = n
			}
		default:
			parts, rest, ok := parseKey(line)
			if !ok || !strings.HasPrefix(rest, "=") {
				continue
			}
			full := append(append(toml.Key{}, table...), parts...)
			if _, seen := lines[full.String()]; !seen {
				lines[full.String()] = n
			}
			for _, q := range []string{`"""`, `'''`} {
				if strings.Count(rest, q)%2 == 1 {
					inMulti = q
				}
			}
		}
	}
	return lines
}

// parseKey reads a dotted TOML key from the start of s and returns its
// parts and what follows it (trimmed).
func parseKey(s string) (parts []string, rest string, ok bool) {
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return nil, "", false
		}
		var part string
		switch s[0] {
		case '"':
			end := 1
			for end < len(s) && s[end] != '"' {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(s) {
				return nil, "", false
			}
			u, err := strconv.Unquote(s[:end+1])
			if err != nil {
				return nil, "", false
			}
			part, s = u, s[end+1:]
		case '\'':
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil, "", false
			}
			part, s = s[1:end+1], s[end+2:]
		default:
			end := 0
			for end < len(s) && isBare(s[end]) {
				end++
			}
			if end == 0 {
				return nil, "", false
			}
			part, s = s[:end], s[end:]
		}
		parts = append(parts, part)
		s = strings.TrimLeft(s, " \t")
		if strings.HasPrefix(s, ".") {
			s = s[1:]
			continue
		}
		return parts, s, true
	}
}

func isBare(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}
