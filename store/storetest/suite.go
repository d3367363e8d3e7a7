// Package storetest is the shared test suite every object store implementation (and every
// wrapper of one) runs, as containerd's content/testsuite.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
)

// Subject is one store under test.
type Subject struct {
	Store interface {
		store.Provider
		store.Ingester
	}
	// Leftovers counts temp files and other traces of unfinished writes (nil: not checked).
	Leftovers func() int
}

// Run runs the suite; newSubject returns a fresh, empty, writable store.
func Run(t *testing.T, newSubject func(t *testing.T) Subject) {
	cases := []struct {
		name string
		fn   func(*testing.T, Subject)
	}{
		{"RoundTrip", testRoundTrip},
		{"RoundTripLarge", testRoundTripLarge},
		{"UnknownDigest", testUnknownDigest},
		{"WrongDigestRejected", testWrongDigest},
		{"WrongSizeRejected", testWrongSize},
		{"ExistingIsSuccess", testExisting},
		{"ConcurrentSameObject", testConcurrent},
		{"AbortLeavesNoTrace", testAbort},
		{"MissingIsNotFound", testMissing},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newSubject(t)) })
	}
}

func blob(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func put(t *testing.T, s Subject, data []byte, expected digest.Digest, size int64) (digest.Digest, error) {
	t.Helper()
	return store.WriteObject(context.Background(), s.Store, bytes.NewReader(data), expected, size)
}

func mustContent(t *testing.T, s Subject, d digest.Digest, want []byte) {
	t.Helper()
	ctx := context.Background()
	info, err := s.Store.Stat(ctx, d)
	if err != nil {
		t.Fatalf("Stat(%s): %v", d, err)
	}
	if info.Size != int64(len(want)) {
		t.Fatalf("Stat(%s).Size = %d, want %d", d, info.Size, len(want))
	}
	f, err := s.Store.Open(ctx, d)
	if err != nil {
		t.Fatalf("Open(%s): %v", d, err)
	}
	defer f.Close()
	got, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("object %s: content differs", d)
	}
}

func noTrace(t *testing.T, s Subject) {
	t.Helper()
	if s.Leftovers != nil {
		if n := s.Leftovers(); n != 0 {
			t.Fatalf("%d temp files left behind", n)
		}
	}
}

func testRoundTrip(t *testing.T, s Subject) {
	data := []byte("hello, kura\n")
	d := digest.FromBytes(data)
	got, err := put(t, s, data, d, int64(len(data)))
	if err != nil || got != d {
		t.Fatalf("WriteObject = %s, %v; want %s", got, err, d)
	}
	mustContent(t, s, d, data)
	noTrace(t, s)
}

func testRoundTripLarge(t *testing.T, s Subject) {
	data := blob(1, 3<<20+17) // beyond any in-memory buffer
	d := digest.FromBytes(data)
	if _, err := put(t, s, data, d, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	mustContent(t, s, d, data)
	noTrace(t, s)
}

func testUnknownDigest(t *testing.T, s Subject) {
	data := blob(2, 70000)
	got, err := put(t, s, data, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if want := digest.FromBytes(data); got != want {
		t.Fatalf("digest %s, want %s", got, want)
	}
	mustContent(t, s, got, data)
}

func testWrongDigest(t *testing.T, s Subject) {
	for _, n := range []int{100, 2 << 20} {
		data := blob(3, n)
		wrong := digest.FromString("something else")
		_, err := put(t, s, data, wrong, int64(len(data)))
		if !errors.Is(err, errdefs.ErrDigestMismatch) {
			t.Fatalf("%d bytes under a wrong digest: err = %v, want ErrDigestMismatch", n, err)
		}
		for _, d := range []digest.Digest{wrong, digest.FromBytes(data)} {
			if _, err := s.Store.Stat(context.Background(), d); !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("after a rejected write, Stat(%s) = %v, want ErrNotFound", d, err)
			}
		}
		noTrace(t, s)
	}
}

func testWrongSize(t *testing.T, s Subject) {
	data := blob(4, 5000)
	d := digest.FromBytes(data)
	for _, size := range []int64{4999, 5001} {
		_, err := put(t, s, data, d, size)
		if !errors.Is(err, errdefs.ErrDigestMismatch) {
			t.Fatalf("size %d for %d bytes: err = %v, want ErrDigestMismatch", size, len(data), err)
		}
	}
	if _, err := s.Store.Stat(context.Background(), d); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Stat after rejected writes = %v, want ErrNotFound", err)
	}
	noTrace(t, s)
}

func testExisting(t *testing.T, s Subject) {
	ctx := context.Background()
	data := blob(5, 1234)
	d := digest.FromBytes(data)
	if _, err := put(t, s, data, d, int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Store.Ingest(ctx, d, int64(len(data))); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Ingest of a stored object: err = %v, want ErrAlreadyExists", err)
	}
	// WriteObject and an ingest that does not know the digest both count it as success.
	if got, err := put(t, s, data, d, int64(len(data))); err != nil || got != d {
		t.Fatalf("WriteObject of a stored object = %s, %v", got, err)
	}
	if got, err := put(t, s, data, "", -1); err != nil || got != d {
		t.Fatalf("anonymous ingest of a stored object = %s, %v", got, err)
	}
	mustContent(t, s, d, data)
	noTrace(t, s)
}

func testConcurrent(t *testing.T, s Subject) {
	ctx := context.Background()
	data := blob(6, 3<<20)
	d := digest.FromBytes(data)
	// Open every writer first so that all of them are really in flight at once.
	const n = 8
	ws := make([]store.Writer, n)
	for i := range ws {
		w, err := s.Store.Ingest(ctx, d, int64(len(data)))
		if err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
		ws[i] = w
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := 0; off < len(data); off += 64 << 10 {
				if _, err := w.Write(data[off:min(off+64<<10, len(data))]); err != nil {
					errs[i] = err
					return
				}
			}
			_, errs[i] = w.Commit(ctx)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("writer %d: %v", i, err)
		}
	}
	mustContent(t, s, d, data)
	noTrace(t, s)
}

func testAbort(t *testing.T, s Subject) {
	ctx := context.Background()
	for _, n := range []int{10, 2 << 20} {
		data := blob(7, n)
		d := digest.FromBytes(data)
		w, err := s.Store.Ingest(ctx, d, int64(n))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := w.Abort(); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Commit(ctx); err == nil {
			t.Fatal("Commit after Abort succeeded")
		}
		if _, err := s.Store.Stat(ctx, d); !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("Stat after Abort = %v, want ErrNotFound", err)
		}
		noTrace(t, s)
	}
}

func testMissing(t *testing.T, s Subject) {
	ctx := context.Background()
	d := digest.FromString("never stored")
	if _, err := s.Store.Stat(ctx, d); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Stat = %v, want ErrNotFound", err)
	}
	if _, err := s.Store.Open(ctx, d); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Open = %v, want ErrNotFound", err)
	}
	if _, err := s.Store.Stat(ctx, "sha256:../../etc"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Stat of a malformed digest = %v, want ErrInvalid", err)
	}
}
