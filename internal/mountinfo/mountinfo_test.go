package mountinfo

import (
	"strings"
	"testing"
)

func TestParseAndTop(t *testing.T) {
	in := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /mnt/with\040space rw - tmpfs tmp\134fs rw
41 40 0:51 / /mnt/with\040space ro,nosuid,nodev - overlay composefs ro,lowerdir+=/x
42 41 0:52 / /mnt/with\040space rw - tmpfs tmpfs rw
43 22 0:53 / /other rw - overlay composefs ro
`
	entries, err := Parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 5 || entries[1].Point != "/mnt/with space" || entries[1].Source != `tmp\fs` || entries[2].Dev != "0:51" {
		t.Fatalf("parsed %+v", entries)
	}
	top, ok := Top(entries, "/mnt/with space")
	if !ok || top.ID != 42 {
		t.Fatalf("top at the stacked point: %+v %v, want ID 42", top, ok)
	}
	// Listed out of order (a mount moved), the one nothing is stacked on is still the top.
	top, _ = Top([]Entry{entries[3], entries[2], entries[1]}, "/mnt/with space")
	if top.ID != 42 {
		t.Fatalf("top out of order: %+v", top)
	}
	if _, ok := Top(entries, "/nowhere"); ok {
		t.Fatal("found a mount at /nowhere")
	}
	if _, err := Parse(strings.NewReader("garbage line\n")); err == nil {
		t.Fatal("a malformed line was accepted")
	}
}
