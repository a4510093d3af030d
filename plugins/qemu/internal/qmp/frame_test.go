package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// frames feeds data to f in pieces of step bytes and collects what it
// returns; step 0 feeds it whole.
func frames(f *framer, data []byte, step int) (lines [][]byte, cuts [][]string, long int) {
	for len(data) > 0 {
		piece := data
		if step > 0 && step < len(piece) {
			piece = piece[:step]
		}
		for len(piece) > 0 {
			n, done := f.scan(piece)
			piece, data = piece[n:], data[n:]
			if done {
				line, c, err := f.take()
				if errors.Is(err, ErrFrameTooLong) {
					long++
					continue
				}
				lines, cuts = append(lines, line), append(cuts, c)
			}
		}
	}
	return lines, cuts, long
}

func TestFramerCutsLongStringsAndSaysWhich(t *testing.T) {
	out := strings.Repeat("QUJD", 1000)
	reply := `{"return": {"exitcode": 0, "out-data": "` + out + `", "err-data": "ZXJy", "exited": true}}` + "\r\n"
	f := newFramer(40, 1<<10)
	lines, cuts, long := frames(f, []byte(reply+reply), 7)
	require.Zero(t, long)
	require.Len(t, lines, 2)
	var msg struct {
		Return ExecStatus `json:"return"`
	}
	require.NoError(t, json.Unmarshal(lines[1], &msg), "%s", lines[1])
	assert.Equal(t, strings.Repeat("QUJD", 10), msg.Return.OutData, "the string's first 40 characters")
	assert.Equal(t, "ZXJy", msg.Return.ErrData)
	assert.True(t, msg.Return.Exited, "the members after the cut string are kept")
	assert.Equal(t, []string{"out-data"}, cuts[1])
}

// QEMU's JSON writer escapes "/" in base64: an escape is one character,
// and a cut never splits one.
func TestFramerCountsEscapesAsOneCharacter(t *testing.T) {
	f := newFramer(8, 1<<10)
	lines, cuts, _ := frames(f, []byte(`{"buf-b64": "a\/b\/c\/d\/e\/f\/"}`+"\n"), 0)
	require.Len(t, lines, 1)
	var msg map[string]string
	require.NoError(t, json.Unmarshal(lines[0], &msg))
	assert.Equal(t, "a/b/c/d/", msg["buf-b64"])
	assert.Equal(t, []string{"buf-b64"}, cuts[0])
}

// A line past the frame bound is dropped to its end; the next line is
// read as if nothing happened, and the framer never held more than the
// bound of the long one.
func TestFramerDropsAnOversizeFrameAndResynchronises(t *testing.T) {
	f := newFramer(16, 100)
	data := append(bytes.Repeat([]byte("1234567890"), 100_000), '\n')
	data = append(data, `{"return": 7}`+"\n"...)
	peak := 0
	for len(data) > 0 {
		n, done := f.scan(data[:min(len(data), 4096)])
		peak = max(peak, cap(f.out))
		data = data[n:]
		if done {
			line, _, err := f.take()
			if err != nil {
				assert.ErrorIs(t, err, ErrFrameTooLong)
				continue
			}
			assert.Equal(t, `{"return": 7}`, string(line))
		}
	}
	assert.LessOrEqual(t, peak, 256, "the framer held %d bytes of a 1 MB line", peak)
}

// Whatever comes in, a frame is at most the bound, and a line that was
// JSON comes out JSON, cut strings and all.
func FuzzFramer(f *testing.F) {
	f.Add([]byte(`{"return": {"exitcode": 0, "out-data": "b3V0Cg==", "exited": true}}`+"\n"), uint8(4), uint16(64), uint8(3))
	f.Add([]byte("\xff{\"return\": 12345}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"x\"}}\r\n"), uint8(1), uint16(20), uint8(0))
	f.Add([]byte(`{"QMP": {"version": {"qemu": {"micro": 0}}}, "k\"ey": "v\u00e9\/"}`+"\n"), uint8(2), uint16(1000), uint8(5))
	f.Add([]byte(`{"a": "`+strings.Repeat("x", 300)+`", "b": ["\\", "\"\n`), uint8(8), uint16(40), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, maxString uint8, maxFrame uint16, step uint8) {
		fr := newFramer(int(maxString), int(maxFrame))
		lines, _, _ := frames(fr, data, int(step))
		in := bytes.Split(data, []byte("\n"))
		for _, l := range lines {
			if len(l) > fr.maxFrame {
				t.Fatalf("a frame of %d bytes, bound %d", len(l), fr.maxFrame)
			}
		}
		// Line by line, when nothing was dropped: JSON stays JSON.
		_, _, long := frames(newFramer(int(maxString), int(maxFrame)), data, 0)
		if long > 0 || bytes.Contains(data, []byte{0xff}) {
			return
		}
		for i, l := range lines {
			src := bytes.TrimSuffix(in[i], []byte("\r"))
			if json.Valid(src) && !json.Valid(l) {
				t.Fatalf("%q came out as %q, not JSON", src, l)
			}
		}
	})
}
