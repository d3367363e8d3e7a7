package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registry"
)

func TestPush(t *testing.T) {
	f := newFixture(t, 5500)
	ctx := context.Background()
	c := f.client(registry.WithChunkSize(1000))
	other := imageref.Repository{Domain: f.reg.Host, Path: "test/other"}

	data := bytes.Repeat([]byte("kura push "), 777)
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(data), Size: int64(len(data))}
	if _, err := c.StatBlob(ctx, other, desc.Digest); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("stat before push: %v", err)
	}
	if err := c.PushBlob(ctx, other, desc, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got, err := c.StatBlob(ctx, other, desc.Digest)
	if err != nil || got.Size != desc.Size {
		t.Fatalf("stat after push: %+v %v", got, err)
	}
	rc, err := c.FetchBlob(ctx, other, desc)
	if err != nil {
		t.Fatal(err)
	}
	back, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back: %v", err)
	}
	// A second push only asks.
	before := c.Stats().Requests
	if err := c.PushBlob(ctx, other, desc, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if n := c.Stats().Requests - before; n != 1 {
		t.Fatalf("second push sent %d requests, want 1 HEAD", n)
	}

	// Wrong content for the digest: the registry refuses it.
	bad := desc
	bad.Digest = digest.FromString("something else")
	if err := c.PushBlob(ctx, other, bad, bytes.NewReader(data)); err == nil {
		t.Fatal("push with a wrong digest succeeded")
	}

	// Mount the fixture blob from test/app into test/other.
	mounted, err := c.MountBlob(ctx, other, f.repo, f.desc)
	if err != nil || !mounted {
		t.Fatalf("mount: %v %v", mounted, err)
	}
	if _, err := c.StatBlob(ctx, other, f.desc.Digest); err != nil {
		t.Fatalf("mounted blob missing: %v", err)
	}
	if mounted, err := c.MountBlob(ctx, other, f.repo, ocispec.Descriptor{Digest: digest.FromString("absent"), Size: 6}); err != nil || mounted {
		t.Fatalf("mount of an absent blob: %v %v", mounted, err)
	}

	// A manifest over the two blobs, then resolved back.
	cfg := []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`)
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	if err := c.PushBlob(ctx, other, cfgDesc, bytes.NewReader(cfg)); err != nil {
		t.Fatal(err)
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc, Layers: []ocispec.Descriptor{desc}}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	md, err := c.PutManifest(ctx, other, "v1", ocispec.MediaTypeImageManifest, mb)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := imageref.Parse("docker://" + other.String() + ":v1")
	img, err := c.Resolve(ctx, ref)
	if err != nil || img.Descriptor.Digest != md.Digest || img.Config.OS != "linux" {
		t.Fatalf("resolve pushed image: %+v %v", img, err)
	}
}
