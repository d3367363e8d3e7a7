package chunked

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit"
)

// parseBlob locates (by annotations if ann is not nil, else by footer) and parses blob.
func parseBlob(t testing.TB, blob []byte, ann map[string]string) (*Layer, error) {
	t.Helper()
	var loc Location
	var err error
	if ann != nil {
		loc, err = LocateFromAnnotations(ann, int64(len(blob)))
	} else {
		loc, err = LocateFromFooter(blob[max(0, len(blob)-FooterFetchSize):], int64(len(blob)))
	}
	if err != nil {
		return nil, err
	}
	var ts []byte
	if loc.TarSplit.Length > 0 {
		ts = blob[loc.TarSplit.Offset:loc.TarSplit.End()]
	}
	return Parse(loc, blob[loc.TOC.Offset:loc.TOC.End()], ts)
}

func TestReadReferenceBlobs(t *testing.T) {
	for _, name := range []string{"mixed", "real"} {
		blob := readTestdata(t, name+".zstd-chunked")
		var desc Descriptor
		if err := json.Unmarshal(readTestdata(t, name+".descriptor.json"), &desc); err != nil {
			t.Fatal(err)
		}
		for _, how := range []string{"annotations", "footer"} {
			t.Run(name+"/"+how, func(t *testing.T) {
				ann := desc.Annotations
				if how == "footer" {
					ann = nil
				}
				l, err := parseBlob(t, blob, ann)
				if err != nil {
					t.Fatal(err)
				}
				if l.TarSplit == nil || len(l.Files) == 0 {
					t.Fatalf("tar-split %d bytes, %d files", len(l.TarSplit), len(l.Files))
				}
				got, err := l.DiffID(bytes.NewReader(blob))
				if err != nil {
					t.Fatal(err)
				}
				if got != desc.DiffID {
					t.Fatalf("rebuilt DiffID %s, want %s", got, desc.DiffID)
				}
				for i := range l.Files {
					f := &l.Files[i]
					for j := range f.Entry.Chunks {
						c := f.Chunk(j)
						if err := ReadChunk(bytes.NewReader(blob), &c, io.Discard); err != nil {
							t.Fatal(err)
						}
					}
				}
			})
		}
	}
}

func TestReadSkopeo19Layer(t *testing.T) {
	dir := filepath.Join("skopeo-1.9", "oci-layout", "blobs", "sha256")
	blob := readTestdata(t, filepath.Join(dir, "1885488406a47daefb7e7c6be0e987ef3bcdc87fa9c318b639e6c69532b34e52"))
	var m struct {
		Layers []struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"layers"`
	}
	if err := json.Unmarshal(readTestdata(t, filepath.Join(dir, "f5f562eba2bb3b984e3a709c32b2ac9f0fdb87d581d543f10f5381ada33da4e7")), &m); err != nil {
		t.Fatal(err)
	}
	tarBytes := readTestdata(t, "mixed.tar")
	for _, ann := range []map[string]string{m.Layers[0].Annotations, nil} {
		l, err := parseBlob(t, blob, ann)
		if err != nil {
			t.Fatal(err)
		}
		if l.TarSplit != nil {
			t.Fatal("old layer has a tar-split")
		}
		if _, err := l.DiffID(bytes.NewReader(blob)); err == nil {
			t.Fatal("DiffID of a layer without tar-split succeeded")
		}
		// Every file decodes and matches its digest, and the content is that of mixed.tar.
		for i := range l.Files {
			var buf bytes.Buffer
			if err := ReadFile(bytes.NewReader(blob), &l.Files[i], &buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(tarBytes, buf.Bytes()[:min(buf.Len(), 4096)]) {
				t.Fatalf("%s: content not found in mixed.tar", l.Files[i].Entry.Name)
			}
		}
	}
}

// The zstd CLI decompresses what we write back to the input tar.
func TestZstdCLIDecompresses(t *testing.T) {
	zstdBin, err := exec.LookPath("zstd")
	if err != nil {
		testkit.Skip(t, "zstd CLI not installed")
	}
	for _, name := range []string{"mixed", "real"} {
		in := readTestdata(t, name+".tar")
		blob := convert(t, in)
		cmd := exec.Command(zstdBin, "-d", "-c")
		cmd.Stdin = bytes.NewReader(blob)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(out) != sha256.Sum256(in) {
			t.Fatalf("%s: zstd -d gives %d bytes, not the input tar (%d bytes)", name, len(out), len(in))
		}
	}
}

func convert(t testing.TB, in []byte, opts ...Option) []byte {
	t.Helper()
	var out bytes.Buffer
	if _, err := Convert(t.Context(), bytes.NewReader(in), &out, opts...); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// Old annotations without a position: the footer locates, the checksum annotation authenticates.
func TestOpenOldAnnotationsWithoutPosition(t *testing.T) {
	blob := readTestdata(t, filepath.Join("skopeo-1.9", "oci-layout", "blobs", "sha256", "1885488406a47daefb7e7c6be0e987ef3bcdc87fa9c318b639e6c69532b34e52"))
	ann := map[string]string{AnnotationOldTOCDigest: "sha256:571210bbf60825db0a8586efaec09baf24292b57f0bedf3c1e66e82894bdedac"}
	l, loc, err := Open(bytes.NewReader(blob), int64(len(blob)), ann)
	if err != nil {
		t.Fatal(err)
	}
	if loc.TOCDigest == "" || len(l.Files) != 9 {
		t.Fatalf("TOC digest %q, %d files", loc.TOCDigest, len(l.Files))
	}
	ann[AnnotationOldTOCDigest] = digest.FromString("other").String()
	if _, _, err := Open(bytes.NewReader(blob), int64(len(blob)), ann); !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Fatalf("wrong checksum annotation: %v", err)
	}
}
