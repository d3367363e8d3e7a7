package registry_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

func randomBlob(n int, seed uint64) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func uploadClient(base http.RoundTripper, opts ...registry.Option) *registry.Client {
	all := []registry.Option{
		registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username + ":" + registrytest.Password))),
		registry.WithRetry(4, time.Millisecond),
		registry.WithChunkSize(4096),
		registry.WithTransport(base),
	}
	return registry.New(append(all, opts...)...)
}

// readBack fetches a blob and compares it with want.
func readBack(t *testing.T, c *registry.Client, repo imageref.Repository, desc ocispec.Descriptor, want []byte) {
	t.Helper()
	rc, err := c.FetchBlob(context.Background(), repo, desc)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back %d bytes, %v; want %d bytes", len(got), err, len(want))
	}
}

func TestUploadBlob(t *testing.T) {
	reg := registrytest.New(t)
	repo := imageref.Repository{Domain: reg.Host, Path: "test/upload"}
	ctx := context.Background()
	for _, size := range []int{0, 1, 4095, 4096, 4097, 20000} {
		blob := randomBlob(size, uint64(size))
		desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(size)}
		ft := &registrytest.FaultyUploads{Inner: http.DefaultTransport}
		c := uploadClient(ft)
		var progress int64
		if err := c.UploadBlob(ctx, repo, desc, bytes.NewReader(blob), func(n int64) { progress += n }); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if progress != int64(size) {
			t.Errorf("size %d: progress reported %d bytes", size, progress)
		}
		if want := (size + 4095) / 4096; ft.Count(http.MethodPatch) != want {
			t.Errorf("size %d: %d PATCH requests, want %d", size, ft.Count(http.MethodPatch), want)
		}
		readBack(t, c, repo, desc, blob)
	}
}

func TestUploadBlobWrongDigest(t *testing.T) {
	reg := registrytest.New(t)
	repo := imageref.Repository{Domain: reg.Host, Path: "test/upload"}
	blob := randomBlob(5000, 1)
	desc := ocispec.Descriptor{Digest: digest.FromString("not this"), Size: int64(len(blob))}
	c := uploadClient(http.DefaultTransport)
	err := c.UploadBlob(context.Background(), repo, desc, bytes.NewReader(blob), nil)
	if !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Fatalf("err = %v, want a digest mismatch", err)
	}
	if _, err := c.StatBlob(context.Background(), repo, desc.Digest); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("stat of the refused blob: %v", err)
	}
}

// TestUploadBlobResumes breaks uploads in the ways a network does and checks that every upload
// still completes with the right bytes. Retries inside the transport are switched off for some
// cases so that UploadBlob's own recovery (status query or new session) is what runs.
func TestUploadBlobResumes(t *testing.T) {
	reg := registrytest.New(t)
	ctx := context.Background()
	blob := randomBlob(40000, 3) // ten chunks
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	for _, tc := range []struct {
		name     string
		kind     registrytest.UploadFault
		at       []int
		attempts int // transport attempts per request
		// wantPatch, if set, is the number of PATCH requests expected: a lost answer whose chunk the
		// registry kept is not sent again when the status query says so.
		wantPatch int
	}{
		{"cut body, transport retries", registrytest.CutBody, []int{3}, 4, 0},
		{"cut body, no transport retries", registrytest.CutBody, []int{3, 7}, 1, 0},
		{"lost answer, transport retries", registrytest.LostAnswer, []int{2}, 4, 0},
		{"lost answer, no transport retries", registrytest.LostAnswer, []int{2, 5}, 1, 10},
		{"not sent, no transport retries", registrytest.NotSent, []int{4, 5}, 1, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			repo := imageref.Repository{Domain: reg.Host, Path: fmt.Sprintf("test/resume%d", tc.kind)}
			at := map[int]bool{}
			for _, i := range tc.at {
				at[i] = true
			}
			ft := &registrytest.FaultyUploads{Inner: http.DefaultTransport, Kind: tc.kind, At: at}
			c := uploadClient(ft, registry.WithRetry(tc.attempts, time.Millisecond))
			// The session must be a fresh one for each case: a blob already present would hide faults.
			var progress int64
			if err := c.UploadBlob(ctx, repo, desc, bytes.NewReader(blob), func(n int64) { progress += n }); err != nil {
				t.Fatal(err)
			}
			if ft.Faults() != len(tc.at) {
				t.Fatalf("%d faults injected, want %d", ft.Faults(), len(tc.at))
			}
			if progress != desc.Size {
				t.Errorf("progress reported %d bytes, want %d", progress, desc.Size)
			}
			t.Logf("POST %d, PATCH %d, GET %d", ft.Count(http.MethodPost), ft.Count(http.MethodPatch), ft.Count(http.MethodGet))
			if tc.wantPatch != 0 && ft.Count(http.MethodPatch) != tc.wantPatch {
				t.Errorf("%d PATCH requests, want %d", ft.Count(http.MethodPatch), tc.wantPatch)
			}
			readBack(t, c, repo, desc, blob)
		})
	}
}

// TestUploadBlobResumesFromStatus checks the continue-from-Range path itself: a PATCH that never
// reached the registry is followed by a status query and the upload goes on in the same
// session, without starting over.
func TestUploadBlobResumesFromStatus(t *testing.T) {
	reg := registrytest.New(t)
	repo := imageref.Repository{Domain: reg.Host, Path: "test/status"}
	blob := randomBlob(40000, 4)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	ft := &registrytest.FaultyUploads{Inner: http.DefaultTransport, Kind: registrytest.NotSent, At: map[int]bool{6: true}}
	c := uploadClient(ft, registry.WithRetry(1, time.Millisecond))
	if err := c.UploadBlob(context.Background(), repo, desc, bytes.NewReader(blob), nil); err != nil {
		t.Fatal(err)
	}
	if n := ft.Count(http.MethodPost); n != 1 {
		t.Errorf("%d sessions started, want 1 (resumed)", n)
	}
	if n := ft.Count(http.MethodPatch); n != 11 {
		t.Errorf("%d PATCH requests, want 11 (10 chunks, one failed)", n)
	}
	readBack(t, c, repo, desc, blob)
}

func TestUploadBlobGivesUp(t *testing.T) {
	reg := registrytest.New(t)
	repo := imageref.Repository{Domain: reg.Host, Path: "test/giveup"}
	blob := randomBlob(10000, 5)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(blob), Size: int64(len(blob))}
	at := map[int]bool{}
	for i := 2; i < 100; i++ {
		at[i] = true
	}
	ft := &registrytest.FaultyUploads{Inner: http.DefaultTransport, Kind: registrytest.NotSent, At: at}
	c := uploadClient(ft, registry.WithRetry(3, time.Millisecond))
	err := c.UploadBlob(context.Background(), repo, desc, bytes.NewReader(blob), nil)
	if !errors.Is(err, registrytest.ErrInjected) {
		t.Fatalf("err = %v, want the injected fault after the retries", err)
	}
}
