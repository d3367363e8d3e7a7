package tarimage

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

func TestImportMakesAnExportableImage(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "etc/motd", Typeflag: tar.TypeReg, Mode: 0o644, Size: 6})
	tw.Write([]byte("hello\n"))
	tw.Close()
	want := digest.FromBytes(buf.Bytes())

	s, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	img, err := Import(ctx, s, bytes.NewReader(buf.Bytes()), "demo:v1", Options{Created: created})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Layers) != 1 || img.Layers[0] != want || !img.Created.Equal(created) {
		t.Fatalf("image %+v, want one layer %s created %s", img, want, created)
	}
	if id, err := s.Ref(ctx, "demo:v1"); err != nil || id != img.ID {
		t.Fatalf("ref: %s, %v", id, err)
	}
	// The same tar and time give the same image ID.
	again, err := Import(ctx, s, bytes.NewReader(buf.Bytes()), "demo:v2", Options{Created: created})
	if err != nil || again.ID != img.ID {
		t.Fatalf("reimport: %s, %v; want %s", again.ID, err, img.ID)
	}
	h := sha256.New()
	unlock, _ := s.RLock(ctx)
	err = layer.Export(ctx, s, want, h)
	unlock()
	if err != nil || digest.NewDigest(digest.SHA256, h) != want {
		t.Fatalf("export: %v", err)
	}
	if _, err := Import(ctx, s, bytes.NewReader(buf.Bytes()), "", Options{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("no name: %v", err)
	}
	if _, err := Import(ctx, s, bytes.NewReader([]byte("not a tar at all, really not")), "x", Options{}); err == nil {
		t.Fatal("garbage imported")
	}
}
