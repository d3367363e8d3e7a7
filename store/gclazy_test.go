package store_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// TestGCRemovesLazyRemovalLeftovers: a lazy pull's completion renames lazy/<hex> to
// lazy/.rm-*/x, then deletes it; a crash in between leaves the filled placeholders (a copy of
// the pulled layers' file data) there. Nothing else ever removes them: gc, under the exclusive
// lock (no completion is between its rename and its delete then), must.
func TestGCRemovesLazyRemovalLeftovers(t *testing.T) {
	s := teststore.Open(t)
	left := filepath.Join(s.Root(), "lazy", ".rm-123", "x")
	data := filepath.Join(left, "0123abcd", "data", "ab")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "cdef"), []byte("a filled placeholder"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(left, "pull.json"), []byte("{}"), 0o444); err != nil {
		t.Fatal(err)
	}
	res, err := s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(left)); !os.IsNotExist(err) {
		t.Fatalf("gc left the crashed removal's placeholders in lazy/ (stat: %v)", err)
	}
	if res.TempFiles == 0 {
		t.Errorf("gc did not count the leftover: %+v", res)
	}
}

// writeLazyRecord writes rec as the pull.json of a pending pull of id in s; it returns the
// pending pull's directory.
func writeLazyRecord(t *testing.T, s *store.Store, id digest.Digest, rec []byte) string {
	t.Helper()
	dir := filepath.Join(s.Root(), "lazy", id.Encoded())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "pull.json"), rec, 0o444); err != nil {
		t.Fatal(err)
	}
	return dir
}

var lazyManifest = []byte(`{"schemaVersion":2}`)

// TestDamagedLazyRecord: a pending lazy pull whose pull.json is truncated, not JSON, names
// another manifest or carries a config that is not JSON stops gc with an error naming it (what
// it protects cannot be guessed) and is a problem for fsck; fsck --repair removes it, and gc
// runs again. The record whole stops nothing.
func TestDamagedLazyRecord(t *testing.T) {
	id := digest.FromBytes(lazyManifest)
	good, err := json.Marshal(map[string]any{"name": "x", "manifest": lazyManifest,
		"config": []byte(`{"rootfs":{"diff_ids":[]}}`), "pending": []string{}})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"truncated":      good[:len(good)/2],
		"garbage":        []byte("\x00\x01 not json"),
		"other manifest": bytes.Replace(good, []byte(`"name":"x"`), []byte(`"name":"y","manifest":"e30="`), 1),
		"bad config":     []byte(`{"manifest":"` + base64.StdEncoding.EncodeToString(lazyManifest) + `","config":"bm90IGpzb24="}`),
	}
	for name, rec := range cases {
		t.Run(name, func(t *testing.T) {
			s := teststore.Open(t)
			dir := writeLazyRecord(t, s, id, rec)
			_, err := s.GC(context.Background())
			if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), id.Encoded()) {
				t.Fatalf("gc over a damaged lazy record: %v; want ErrInvalid naming the pull", err)
			}
			r, err := s.Fsck(context.Background(), false)
			if err != nil || r.Clean() || !strings.Contains(strings.Join(r.Problems, "\n"), id.Encoded()) {
				t.Fatalf("fsck: %+v, %v; want a problem naming the pull", r, err)
			}
			if r, err = s.Fsck(context.Background(), true); err != nil || r.Repaired != 1 {
				t.Fatalf("fsck --repair: %+v, %v", r, err)
			}
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("the damaged pull is still there: %v", err)
			}
			if _, err := s.GC(context.Background()); err != nil {
				t.Fatalf("gc after the repair: %v", err)
			}
		})
	}
	s := teststore.Open(t)
	writeLazyRecord(t, s, id, good)
	if _, err := s.GC(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Fsck(context.Background(), false); err != nil || !r.Clean() {
		t.Fatalf("fsck of a good lazy record: %+v, %v", r, err)
	}
}

// TestDamagedLazyRecordServedIsKept: fsck --repair leaves a damaged pending pull whose record
// a fill service holds (flock), reporting it unrepaired.
func TestDamagedLazyRecordServedIsKept(t *testing.T) {
	s := teststore.Open(t)
	dir := writeLazyRecord(t, s, digest.FromBytes(lazyManifest), []byte("{"))
	f, err := os.Open(filepath.Join(dir, "pull.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Fsck(context.Background(), true); err != nil || r.Repaired != 0 || len(r.Unrepaired) != 1 {
		t.Fatalf("fsck --repair of a served record: %+v, %v; want it left, unrepaired", r, err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("repair removed a pending pull being served: %v", err)
	}
}
