// Package sourcetest is the shared test suite every source.Source implementation runs (a
// registry repository, an OCI layout), as store/storetest is for object stores: whatever the
// transport, pull, push and import rely on the same contract.
package sourcetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/source"
)

// Fixture is the image a source under test serves: a manifest naming Config and one layer,
// Blob, whose bytes the sources never interpret. Every blob and the manifest must be stored.
type Fixture struct {
	Manifest, Config, Blob []byte
	// ManifestDesc, ConfigDesc and BlobDesc describe them (media type, digest, size).
	ManifestDesc, ConfigDesc, BlobDesc ocispec.Descriptor
}

// NewFixture builds the fixture: a layer of 1 MiB of random bytes, enough for a registry to
// split its ranges over parallel requests.
func NewFixture(t testing.TB) Fixture {
	t.Helper()
	var f Fixture
	f.Blob = make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range f.Blob {
		f.Blob[i] = byte(rng.Uint32())
	}
	f.BlobDesc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(f.Blob), Size: int64(len(f.Blob))}
	config := ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{f.BlobDesc.Digest}}}
	f.Config = mustJSON(t, config)
	f.ConfigDesc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(f.Config), Size: int64(len(f.Config))}
	m := ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: f.ConfigDesc, Layers: []ocispec.Descriptor{f.BlobDesc}}
	f.Manifest = mustJSON(t, m)
	f.ManifestDesc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(f.Manifest), Size: int64(len(f.Manifest))}
	return f
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Subject is one source under test and the name its Resolve must give the image.
type Subject struct {
	Source source.Source
	Name   string
}

// Run runs the suite; newSubject returns a source serving f.
func Run(t *testing.T, newSubject func(t *testing.T, f Fixture) Subject) {
	cases := []struct {
		name string
		fn   func(*testing.T, Fixture, Subject)
	}{
		{"Resolve", testResolve},
		{"OpenBlob", testOpenBlob},
		{"OpenBlobMissing", testOpenBlobMissing},
		{"GetRanges", testGetRanges},
		{"GetRangesOutsideBlob", testGetRangesOutside},
		{"GetRangesCallbackError", testGetRangesCallbackError},
	}
	f := NewFixture(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, f, newSubject(t, f)) })
	}
}

func testResolve(t *testing.T, f Fixture, s Subject) {
	img, err := s.Source.Resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != s.Name {
		t.Errorf("name %q, want %q", img.Name, s.Name)
	}
	if img.Descriptor.Digest != f.ManifestDesc.Digest || img.Descriptor.Size != f.ManifestDesc.Size || !bytes.Equal(img.ManifestBytes, f.Manifest) {
		t.Errorf("manifest %+v, want %+v", img.Descriptor, f.ManifestDesc)
	}
	if !bytes.Equal(img.ConfigBytes, f.Config) || len(img.Config.RootFS.DiffIDs) != 1 || img.Config.RootFS.DiffIDs[0] != f.BlobDesc.Digest {
		t.Errorf("config %s, want %s", img.ConfigBytes, f.Config)
	}
	if len(img.Manifest.Layers) != 1 || img.Manifest.Layers[0].Digest != f.BlobDesc.Digest || img.Manifest.Config.Digest != f.ConfigDesc.Digest {
		t.Errorf("parsed manifest %+v", img.Manifest)
	}
	if img.Index != nil {
		t.Errorf("index %+v for a source that names a manifest", img.Index)
	}
}

func testOpenBlob(t *testing.T, f Fixture, s Subject) {
	rc, err := s.Source.OpenBlob(context.Background(), f.BlobDesc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, f.Blob) {
		t.Fatalf("blob: %d bytes (want %d), %v", len(got), len(f.Blob), err)
	}
}

func testOpenBlobMissing(t *testing.T, f Fixture, s Subject) {
	b := []byte("not stored")
	d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(b), Size: int64(len(b))}
	rc, err := s.Source.OpenBlob(context.Background(), d)
	if err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing blob: %v, want ErrNotFound", err)
	}
}

// testGetRanges asks for ranges out of order and checks each arrives once with exactly its
// bytes, and that the statistics count at least what was asked and read.
func testGetRanges(t *testing.T, f Fixture, s Subject) {
	ranges := []source.Range{{Offset: 900_000, Length: 1000}, {Offset: 17, Length: 4096}, {Offset: 300_000, Length: 200_000},
		{Offset: f.BlobDesc.Size - 10, Length: 10}, {Offset: 10_000, Length: 1}}
	var mu sync.Mutex
	seen := map[source.Range]int{}
	var sum int64
	for _, r := range ranges {
		sum += r.Length
	}
	rep, err := s.Source.GetRanges(context.Background(), f.BlobDesc, ranges, func(r source.Range, rd io.Reader) error {
		b, err := io.ReadAll(rd)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		seen[r]++
		if !bytes.Equal(b, f.Blob[r.Offset:r.End()]) {
			t.Errorf("range %+v: %d bytes, not the blob's", r, len(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		if seen[r] != 1 {
			t.Errorf("range %+v delivered %d times", r, seen[r])
		}
	}
	if rep.Ranges != len(ranges) || rep.BytesRequested < sum || rep.BytesReceived < sum {
		t.Errorf("statistics %+v: want %d ranges, at least %d bytes asked for and received", rep, len(ranges), sum)
	}
}

func testGetRangesOutside(t *testing.T, f Fixture, s Subject) {
	for _, r := range []source.Range{{Offset: f.BlobDesc.Size - 5, Length: 10}, {Offset: -1, Length: 2}} {
		_, err := s.Source.GetRanges(context.Background(), f.BlobDesc, []source.Range{r}, func(source.Range, io.Reader) error {
			t.Errorf("range %+v outside the blob delivered", r)
			return nil
		})
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("range %+v: %v, want ErrInvalid", r, err)
		}
	}
}

func testGetRangesCallbackError(t *testing.T, f Fixture, s Subject) {
	stop := errors.New("callback refuses")
	_, err := s.Source.GetRanges(context.Background(), f.BlobDesc, []source.Range{{Offset: 0, Length: 100}, {Offset: 500_000, Length: 100}},
		func(source.Range, io.Reader) error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("err = %v, want the callback's error", err)
	}
}
