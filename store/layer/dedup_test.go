package layer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store/layer"
)

type tarFile struct {
	hdr  *tar.Header
	data []byte
}

// TestDedupVariants imports ten variants of one real tree, each with ~3% of its files changed,
// and checks that the store's physical size (objects + all metadata) stays within 2% of the
// distinct content bytes. KURA_DEDUP_TREE picks the tree (default /usr/bin: many large files,
// so the per-file metadata is small against the content).
func TestDedupVariants(t *testing.T) {
	if testing.Short() {
		testkit.Skip(t, "-short")
	}
	tree := os.Getenv("KURA_DEDUP_TREE")
	if tree == "" {
		tree = "/usr/bin"
	}
	base := filepath.Join(t.TempDir(), "base.tar")
	if out, err := exec.Command("tar", "-cf", base, "-C", filepath.Dir(tree), filepath.Base(tree)).CombinedOutput(); err != nil {
		t.Fatalf("tar of %s: %v %s", tree, err, out)
	}
	var files []tarFile
	f, err := os.Open(base)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		files = append(files, tarFile{h, b})
	}
	f.Close()
	os.Remove(base)

	ctx := context.Background()
	s := teststore.Open(t)
	unlock, _ := s.RLock(ctx)
	defer unlock()
	distinct := map[digest.Digest]int64{}
	var changedFiles, regular int
	const variants = 10
	for v := range variants {
		rng := rand.New(rand.NewSource(int64(v)))
		pr, pw := io.Pipe()
		go func() {
			tw := tar.NewWriter(pw)
			for _, tf := range files {
				h := *tf.hdr
				data := tf.data
				if h.Typeflag == tar.TypeReg {
					if v > 0 && rng.Intn(100) < 3 {
						data = append(append([]byte{}, data...), fmt.Sprintf("variant %d\n", v)...)
						h.Size = int64(len(data))
						changedFiles++
					}
					if v == 0 {
						regular++
					}
					if len(data) > 0 {
						distinct[digest.FromBytes(data)] = int64(len(data))
					}
				}
				if err := tw.WriteHeader(&h); err != nil {
					pw.CloseWithError(err)
					return
				}
				tw.Write(data)
			}
			pw.CloseWithError(tw.Close())
		}()
		h := sha256.New()
		l, err := layer.Import(ctx, s, io.TeeReader(pr, h), layer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		config, _ := json.Marshal(ocispec.Image{RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{l.DiffID}}})
		manifest, _ := json.Marshal(ocispec.Manifest{
			Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
			Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: l.DiffID, Size: l.TarSize}},
		})
		img, err := s.PutImage(ctx, manifest, config)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetRef(ctx, fmt.Sprintf("variant%d", v), img.ID); err != nil {
			t.Fatal(err)
		}
	}
	unlock()
	u, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want int64
	for _, n := range distinct {
		want += n
	}
	ratio := float64(u.Physical) / float64(want)
	t.Logf("%s: %d regular files, %d changed over %d variants; logical %d MiB, distinct content %d bytes, "+
		"objects %d bytes, metadata %d bytes, physical %d bytes = %.4f x distinct; dedup ratio %.2f",
		tree, regular, changedFiles, variants, u.Logical>>20, want, u.ObjectBytes, u.MetadataBytes, u.Physical, ratio, u.DedupRatio())
	if u.ObjectBytes != want {
		t.Errorf("object bytes %d, distinct content %d: objects are not deduplicated exactly", u.ObjectBytes, want)
	}
	if ratio > 1.02 {
		t.Errorf("physical %d > 1.02 x distinct %d", u.Physical, want)
	}
	_ = bytes.MinRead
}
