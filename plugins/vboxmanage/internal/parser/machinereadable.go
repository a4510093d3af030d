package parser

import (
	"strings"
)

// Pair is one key=value line of machine-readable output.
type Pair struct {
	// Key is the key with its quotes and escapes removed.
	Key string
	// Value is the value with one pair of surrounding quotes removed and
	// `\\`, `\"` unescaped; an irregular value (VideoMode's
	// `"1024,768,32"@0,0 1`) is kept as printed.
	Value string
	// Line is the 1-based line the pair was read from.
	Line int
}

// Pairs reads machine-readable output (`showvminfo --machinereadable`,
// `snapshot list --machinereadable`) into its key=value lines, in order.
// Keys may repeat and are all kept. Lines without "=" (the 7.0 `Encryption:`
// leak, ` rec_screen0`, wrapper warnings, continuation lines of a multi-line
// description) are skipped.
func Pairs(data []byte) []Pair {
	var out []Pair
	for i, l := range lines(data) {
		key, value, ok := splitPair(l)
		if !ok {
			continue
		}
		out = append(out, Pair{Key: key, Value: value, Line: i + 1})
	}
	return out
}

// splitPair splits a line at the first "=" outside a leading quoted key.
// A greedy split would break values that contain "=", and VRDEClients==0
// must come out as key "VRDEClients", value "=0" rather than fail.
func splitPair(l string) (key, value string, ok bool) {
	if strings.HasPrefix(l, `"`) {
		if end := closingQuote(l); end > 0 && end+1 < len(l) && l[end+1] == '=' {
			return unescape(l[1:end]), unquote(l[end+2:]), true
		}
	}
	i := strings.IndexByte(l, '=')
	if i < 0 {
		return "", "", false
	}
	return l[:i], unquote(l[i+1:]), true
}

// closingQuote returns the index of the quote that ends the quoted string
// starting at s[0], honouring backslash escapes, or -1.
func closingQuote(s string) int {
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// unquote strips one pair of surrounding quotes and unescapes what is left.
// Unquoted values (numbers, `<status>,<ms>` facility values) are returned as
// printed.
func unquote(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return unescape(v[1 : len(v)-1])
	}
	return v
}
