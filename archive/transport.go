package archive

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/ocilayout"
)

// Opened is an image of a docker-archive, oci-archive or dir, presented as an OCI layout so that
// everything that reads oci:DIR[:TAG] (import, pull, copy) reads it too, verified the same way.
type Opened struct {
	// Dir is the layout and Tag the ref name of the image in it (empty: its only image).
	Dir, Tag string
	// Name is the image's own name in the archive (a RepoTags entry or OCI ref name), if any.
	Name string
	tmp  string
}

// Ref returns the oci: reference of the opened image.
func (o *Opened) Ref() string {
	if o.Tag == "" {
		return "oci:" + o.Dir
	}
	return "oci:" + o.Dir + ":" + o.Tag
}

// Close removes what Open unpacked.
func (o *Opened) Close() error { return os.RemoveAll(o.tmp) }

// Open presents the image ref names as an OCI layout under a new directory in tmpDir (empty:
// the system's); an archive is unpacked there, a dir's blobs are linked.
func Open(ref imageref.ArchiveRef, tmpDir string) (*Opened, error) {
	tmp, err := os.MkdirTemp(tmpDir, "kura-archive-")
	if err != nil {
		return nil, err
	}
	o := &Opened{tmp: tmp}
	if err := o.open(ref); err != nil {
		o.Close()
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	return o, nil
}

func (o *Opened) open(ref imageref.ArchiveRef) error {
	if ref.Transport == "dir" {
		o.Dir = filepath.Join(o.tmp, "layout")
		return dirToLayout(ref.Path, o.Dir)
	}
	f, err := os.Open(ref.Path)
	if err != nil {
		return fmt.Errorf("%v: %w", err, errdefs.ErrNotFound)
	}
	defer f.Close()
	x := filepath.Join(o.tmp, "x")
	if err := Extract(f, x); err != nil {
		return err
	}
	only, err := sourceIndex(ref)
	if err != nil {
		return err
	}
	dir, kind, err := toLayout(x, filepath.Join(o.tmp, "layout"), only)
	if err != nil {
		return err
	}
	if kind.String() != ref.Transport {
		return fmt.Errorf("the file is a %s: %w", kind, errdefs.ErrInvalid)
	}
	o.Dir, o.Tag, o.Name = dir, ref.Ref, ref.Ref
	if ref.Ref == "" || only >= 0 {
		// The archive's only image, which in a docker-archive may carry several names.
		o.Tag, err = soleName(ocilayout.Layout{Dir: dir})
		o.Name = o.Tag
	}
	return err
}

// soleName returns the first name of the layout's only image (empty: it has none); several
// images need a REF to pick one.
func soleName(l ocilayout.Layout) (string, error) {
	idx, err := l.Index()
	if err != nil {
		return "", err
	}
	for _, m := range idx.Manifests {
		if m.Digest != idx.Manifests[0].Digest {
			return "", fmt.Errorf("the archive holds several images; name one with :REF: %w", errdefs.ErrInvalid)
		}
	}
	if len(idx.Manifests) == 0 {
		return "", fmt.Errorf("the archive holds no images: %w", errdefs.ErrInvalid)
	}
	return idx.Manifests[0].Annotations[ocispec.AnnotationRefName], nil
}

// hexName matches skopeo's dir blob names (a sha256 digest's hex) and per-instance manifests.
var hexName = regexp.MustCompile(`^([0-9a-f]{64})(\.manifest\.json)?$`)

// dirToLayout presents skopeo's dir format (manifest.json, version, blobs named by their hex
// digest) as an OCI layout in out: the blobs are symlinked (their digests are checked when read),
// manifest.json becomes the layout's only image.
func dirToLayout(src, out string) error {
	src, err := filepath.Abs(src)
	if err != nil {
		return err
	}
	if v, err := os.ReadFile(filepath.Join(src, "version")); err != nil || !strings.HasPrefix(string(v), "Directory Transport Version") {
		return fmt.Errorf("not a dir: image (no version file of skopeo's directory transport): %w", errdefs.ErrInvalid)
	}
	w, err := ocilayout.Create(out)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		m := hexName.FindStringSubmatch(e.Name())
		if m == nil || !e.Type().IsRegular() {
			continue
		}
		bp, _ := w.Layout().BlobPath(digest.NewDigestFromEncoded(digest.SHA256, m[1]))
		if err := os.Symlink(filepath.Join(src, e.Name()), bp); err != nil {
			return err
		}
	}
	manifest, err := os.ReadFile(filepath.Join(src, "manifest.json"))
	if err != nil {
		return fmt.Errorf("dir: manifest.json: %v: %w", err, errdefs.ErrInvalid)
	}
	if len(manifest) > maxMeta {
		return fmt.Errorf("dir: manifest.json over %d bytes: %w", maxMeta, errdefs.ErrInvalid)
	}
	var head struct {
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(manifest, &head); err != nil {
		return fmt.Errorf("dir: manifest.json: %v: %w", err, errdefs.ErrInvalid)
	}
	d, err := w.PutBlob(manifest)
	if err != nil {
		return err
	}
	d.MediaType = head.MediaType
	if d.MediaType == "" {
		d.MediaType = ocispec.MediaTypeImageManifest
	}
	return w.AddManifest(d, "")
}

// sourceIndex is N of skopeo's docker-archive:PATH:@N (the image at position N of the
// archive's manifest.json), or -1 when REF is a name or absent.
func sourceIndex(ref imageref.ArchiveRef) (int, error) {
	n, ok := strings.CutPrefix(ref.Ref, "@")
	if !ok {
		return -1, nil
	}
	i, err := strconv.Atoi(n)
	if err != nil || i < 0 || n != strconv.Itoa(i) {
		return -1, fmt.Errorf("%q: want @N, N the position of an image in the archive (0, 1, …): %w", ref.Ref, errdefs.ErrInvalid)
	}
	return i, nil
}
