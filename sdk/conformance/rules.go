package conformance

import (
	"regexp"
	"strings"
)

// ruleBullet is a bullet of docs/contract.md that starts with a mark.
var ruleBullet = regexp.MustCompile(`^(\s*)- \*\*(§\d+\.\d+[a-z]?)\*\*(.*)$`)

// Rules lists the rules of the contract's text (docs/contract.md), in
// order, by their marks ("§3.2b"): each bullet that starts with a mark and
// says MUST or MUST NOT in its own text (not its sub-bullets'). It also
// returns every line that says MUST outside such a bullet, which the
// contract must not have: a rule without a mark is a rule no check cites.
func Rules(contract string) (rules []string, unmarked []string) {
	var mark, text string
	var lines []string
	flush := func() {
		if mark != "" && strings.Contains(text, "MUST") {
			rules = append(rules, mark)
		} else {
			for _, l := range lines {
				if strings.Contains(l, "MUST") {
					unmarked = append(unmarked, strings.TrimSpace(l))
				}
			}
		}
		mark, text, lines = "", "", nil
	}
	for _, l := range strings.Split(contract, "\n") {
		if m := ruleBullet.FindStringSubmatch(l); m != nil {
			flush()
			mark, text, lines = m[2], m[3], []string{l}
			continue
		}
		trimmed := strings.TrimSpace(l)
		if mark != "" && trimmed != "" && !strings.HasPrefix(trimmed, "- ") && strings.HasPrefix(l, "  ") {
			text += " " + trimmed
			lines = append(lines, l)
			continue
		}
		flush()
		if strings.Contains(l, "MUST") && !strings.Contains(l, "**MUST**") {
			unmarked = append(unmarked, trimmed)
		}
	}
	flush()
	return rules, unmarked
}
