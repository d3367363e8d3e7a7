package tarstream

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/kura-oci/kura/errdefs"
)

// readAll reads every line of u, payloads copied (a streamed line's payload is valid until the
// next call only).
func readAll(t *testing.T, u *LineReader) ([]Line, error) {
	t.Helper()
	var out []Line
	for {
		l, err := u.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		l.Payload = bytes.Clone(l.Payload)
		out = append(out, l)
	}
}

// A stream is read line for line as the same bytes whole: blank lines, a line longer than the
// reader's buffer, a last line without a newline, and read boundaries anywhere.
func TestLineReaderFromMatchesBuffer(t *testing.T) {
	long := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 200<<10))
	text := fmt.Sprintf("{\"type\":2,\"payload\":\"%s\",\"position\":0}\n\n  \n", base64.StdEncoding.EncodeToString([]byte("header")))
	text += `{"type":1,"name":"a/b","size":3,"payload":"AAAAAAAAAAA=","position":1}` + "\n"
	text += fmt.Sprintf("{\"type\":2,\"payload\":\"%s\",\"position\":2}\n", long)
	text += `{"type":1,"name":"c","payload":null,"position":3}`
	want, err := readAll(t, NewLineReader([]byte(text), MaxTarSplitLines))
	if err != nil || len(want) != 4 {
		t.Fatalf("buffered: %d lines, %v", len(want), err)
	}
	for name, r := range map[string]io.Reader{
		"whole":    strings.NewReader(text),
		"one byte": iotest.OneByteReader(strings.NewReader(text)),
		"halves":   iotest.HalfReader(strings.NewReader(text)),
	} {
		got, err := readAll(t, NewLineReaderFrom(r, MaxTarSplitLines))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: %d lines, want %d", name, len(got), len(want))
		}
		for i := range want {
			g, w := got[i], want[i]
			if g.Type != w.Type || g.Name != w.Name || g.Size != w.Size || !bytes.Equal(g.Payload, w.Payload) || g.Position != w.Position {
				t.Fatalf("%s: line %d: %+v, want %+v", name, i, g, w)
			}
		}
	}
}

// The line bound counts blank lines in a stream as in a buffer, and a line past MaxStreamLine
// is refused without being held whole.
func TestLineReaderFromBounds(t *testing.T) {
	blanks := strings.Repeat("\n", 10) + `{"type":1,"name":"c","payload":null,"position":0}` + "\n"
	for name, u := range map[string]*LineReader{
		"buffer": NewLineReader([]byte(blanks), 5),
		"stream": NewLineReaderFrom(strings.NewReader(blanks), 5),
	} {
		if _, err := readAll(t, u); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: 10 blank lines under a bound of 5: %v, want ErrInvalid", name, err)
		}
	}
	huge := io.MultiReader(strings.NewReader(`{"type":2,"payload":"`), &letters{n: MaxStreamLine + 1})
	if _, err := readAll(t, NewLineReaderFrom(huge, MaxTarSplitLines)); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "line over") {
		t.Errorf("a line over the bound: %v, want ErrInvalid", err)
	}
}

// letters reads n 'A's.
type letters struct{ n int }

func (z *letters) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), z.n)
	for i := range p[:k] {
		p[i] = 'A'
	}
	z.n -= k
	return k, nil
}
