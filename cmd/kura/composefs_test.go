package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/internal/testdata"
)

// TestComposefsCommands runs the built kura binary: build from a dump (checked against the
// mkcomposefs checksum), dump it back, and build from a directory with a digest store.
func TestComposefsCommands(t *testing.T) {
	vectors := testdata.Dir(t, "composefs")
	dir := t.TempDir()
	kura := filepath.Join(dir, "kura")
	if out, err := exec.Command("go", "build", "-o", kura, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	run := func(stdin []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(kura, args...)
		cmd.Stdin = bytes.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("kura %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
		}
		return out
	}
	img := filepath.Join(dir, "special.img")
	dump, err := os.ReadFile(filepath.Join(vectors, "special.dump"))
	if err != nil {
		t.Fatal(err)
	}
	run(dump, "composefs", "build", "--from-dump", "-", "--min-version", "0", "--max-version", "0", "--strict", img)
	want, _ := os.ReadFile(filepath.Join(vectors, "special.dump.sha256"))
	if got := fileSHA256(t, img); got != strings.TrimSpace(string(want)) {
		t.Errorf("image sha256 %s, mkcomposefs wrote %s", got, want)
	}
	printed := run(nil, "composefs", "dump", img)
	img2 := filepath.Join(dir, "again.img")
	run(printed, "composefs", "build", "--from-dump", "-", "--max-version", "0", img2)
	if fileSHA256(t, img) != fileSHA256(t, img2) {
		t.Error("image -> dump -> image differs")
	}

	src, objects := filepath.Join(dir, "src"), filepath.Join(dir, "objects")
	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789"), 1000)
	os.WriteFile(filepath.Join(src, "sub", "big"), big, 0o644)
	os.WriteFile(filepath.Join(src, "small"), []byte("hi\n"), 0o644)
	run(nil, "composefs", "build", src, filepath.Join(dir, "dir.img"), "--digest-store", objects)
	out := string(run(nil, "composefs", "dump", filepath.Join(dir, "dir.img")))
	var object string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "/sub/big ") {
			object = strings.Fields(line)[8]
		}
	}
	if object == "" {
		t.Fatalf("no payload for /sub/big in\n%s", out)
	}
	if got, err := os.ReadFile(filepath.Join(objects, object)); err != nil || !bytes.Equal(got, big) {
		t.Errorf("object %s: %v", object, err)
	}
	if !strings.Contains(out, "/small 3 100644 1 0 0 0 ") || !strings.Contains(out, ` - hi\n -`+"\n") {
		t.Errorf("small file not inline:\n%s", out)
	}
	cmd := exec.Command(kura, "composefs", "build", "--from-dump", filepath.Join(vectors, "should-fail-dot-name.dump"), filepath.Join(dir, "x.img"))
	if err := cmd.Run(); err == nil || cmd.ProcessState.ExitCode() != 4 {
		t.Errorf("bad dump: exit %d, want 4 (invalid input)", cmd.ProcessState.ExitCode())
	}
}

func fileSHA256(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
