package tarimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store/layer"
)

func TestImportMakesAnExportableImage(t *testing.T) {
	buf := bytes.NewBuffer(tartest.Tar(t, tartest.Dir("etc/"), tartest.File("etc/motd", "hello\n")))
	want := digest.FromBytes(buf.Bytes())

	s := teststore.Open(t)
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

// An image archive given as a root file system is refused (ErrInvalid) and no image is made.
func TestImportRefusesImageArchives(t *testing.T) {
	s := teststore.Open(t)
	ctx := context.Background()
	cases := map[string][]byte{
		"docker-archive": tartest.Tar(t, tartest.File("abc/layer.tar", "x"), tartest.File("abc.json", "{}"),
			tartest.File("manifest.json", `[{"Config":"abc.json","RepoTags":["a:b"],"Layers":["abc/layer.tar"]}]`)),
		"oci-archive": tartest.Tar(t, tartest.File("blobs/sha256/00", "x"), tartest.File("oci-layout", `{"imageLayoutVersion":"1.0.0"}`),
			tartest.File("index.json", `{"schemaVersion":2,"manifests":[]}`)),
	}
	for kind, b := range cases {
		_, err := Import(ctx, s, bytes.NewReader(b), "arch:"+kind[:3], Options{})
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), kind) || !strings.Contains(err.Error(), "kura load") {
			t.Errorf("%s: %v, want an invalid-input error naming it and kura load", kind, err)
		}
		if _, err := s.Ref(ctx, "arch:"+kind[:3]); err == nil {
			t.Errorf("%s: an image was recorded", kind)
		}
	}
	// A root file system that merely holds files of those names deeper down is no archive.
	plain := tartest.Tar(t, tartest.File("srv/manifest.json", `[{"Config":"a"}]`), tartest.File("oci-layout", `{"imageLayoutVersion":"1.0.0"}`))
	if _, err := Import(ctx, s, bytes.NewReader(plain), "plain:v1", Options{}); err != nil {
		t.Fatalf("plain tar: %v", err)
	}
}
