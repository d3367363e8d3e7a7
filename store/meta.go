package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/digests"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/verity"
)

// Files of a layer directory.
const (
	layerJSON     = "layer.json"
	layerTOC      = "toc.json.zst"
	layerTarSplit = "tar-split.json.zst"
	layerVerity   = "verity"

	imageJSON    = "image.json"
	manifestJSON = "manifest.json"
	configJSON   = "config.json"

	// maxMetaSize bounds any decompressed metadata file the store reads back (TOC, tar-split,
	// manifest, config); the reference refuses TOCs over 150 MiB.
	maxMetaSize = 1 << 30
	maxRefName  = 255
)

// Layer describes a stored layer. Its TOC lists every entry with the same fields and rollsum
// chunk digests as a zstd:chunked TOC, and its tar-split rebuilds the exact tar (hence DiffID).
type Layer struct {
	DiffID digest.Digest `json:"diffID"`
	// TarSize is the size of the uncompressed tar.
	TarSize int64 `json:"tarSize"`
	// ContentSize is the sum of the sizes of the layer's regular files (hardlinks counted once).
	ContentSize int64 `json:"contentSize"`
	// TOCSize and TarSplitSize are the lengths of the TOC and tar-split JSON, which size the
	// buffers they are read back into (zero: unknown; the frames may not record them).
	TOCSize      int64     `json:"tocSize,omitempty"`
	TarSplitSize int64     `json:"tarSplitSize,omitempty"`
	Created      time.Time `json:"created"`
}

// Image describes a stored image: its manifest, config and layer DiffIDs.
type Image struct {
	// ID is the manifest digest.
	ID     digest.Digest `json:"id"`
	Config digest.Digest `json:"config"`
	// Layers are the DiffIDs of the layers the store holds for the image, in order: what
	// checkout, mount, gc and fsck follow.
	Layers []digest.Digest `json:"diffIDs"`
	// ConfigDiffIDs are the config's rootfs.diff_ids when they differ from Layers: an image
	// pulled with --allow-diffid-mismatch, whose blobs decompress to tars that are not the ones
	// its config names. Each layer is stored under its true DiffID; this keeps what the config
	// claimed. Absent (nil) for every consistent image.
	ConfigDiffIDs []digest.Digest `json:"configDiffIDs,omitempty"`
	// Created comes from the config (zero when absent); Imported is when the store got it.
	Created  time.Time `json:"created,omitzero"`
	Imported time.Time `json:"imported"`
	// Source is the registry reference the image was first pulled from, pinned by digest
	// (HOST/REPO@sha256:…): where fsck --repair re-fetches a damaged layer. Empty for imports and
	// for records written before it existed.
	Source string `json:"source,omitempty"`
}

// ImageOption configures PutImage.
type ImageOption func(*Image)

// WithSource records where the image came from (see Image.Source). An image already stored
// keeps its record: records never change.
func WithSource(ref string) ImageOption { return func(img *Image) { img.Source = ref } }

// WithTrueDiffIDs records the image under the DiffIDs its layers' tars really hash to, which
// differ from its config's (see Image.ConfigDiffIDs): the layers must be stored under these.
// Equal DiffIDs leave the record as any other image's.
func WithTrueDiffIDs(layers []digest.Digest) ImageOption {
	return func(img *Image) {
		if slices.Equal(layers, img.Layers) {
			return
		}
		img.ConfigDiffIDs, img.Layers = img.Layers, slices.Clone(layers)
	}
}

// ConfigLayers are the DiffIDs the image's config lists: Layers, unless ConfigDiffIDs records
// a difference.
func (img Image) ConfigLayers() []digest.Digest {
	if img.ConfigDiffIDs != nil {
		return img.ConfigDiffIDs
	}
	return img.Layers
}

func (s *Metadata) layerDir(diffID digest.Digest) (string, error) {
	if err := checkDigest(diffID); err != nil {
		return "", err
	}
	return filepath.Join(s.root, dirLayers, diffID.Encoded()), nil
}

func (s *Metadata) imageDir(id digest.Digest) (string, error) {
	if err := checkDigest(id); err != nil {
		return "", err
	}
	return filepath.Join(s.root, dirImages, id.Encoded()), nil
}

// readZstd reads a zstd-compressed metadata file, bounded by maxMetaSize. The file is read whole
// and decoded in one call, into a buffer of size bytes if that is known (the layer record's),
// else of the size its frame header announces.
func readZstd(path string, size int64) ([]byte, error) {
	z, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxMetaSize))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	// Else size the output from the frame header, or else generously: DecodeAll grows a short
	// buffer in small steps. (A partial pull keeps the blob's frames, which may not record their
	// size.) A wrong size costs only memory or a copy: the output is what the frames hold.
	if size <= 0 || size > maxMetaSize {
		size = min(int64(len(z))*32, maxMetaSize)
		var hdr zstd.Header
		if hdr.Decode(z) == nil && hdr.HasFCS && hdr.FrameContentSize <= maxMetaSize {
			size = int64(hdr.FrameContentSize)
		}
	}
	b, err := dec.DecodeAll(z, make([]byte, 0, size))
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", path, err, errdefs.ErrInvalid)
	}
	if len(b) > maxMetaSize {
		return nil, fmt.Errorf("%s: over %d bytes: %w", path, maxMetaSize, errdefs.ErrInvalid)
	}
	return b, nil
}

// commitDir makes a directory of metadata files appear at dst atomically: files are written and
// fsynced in a temp directory, which is renamed into place. An existing dst is success (the same
// key names the same content).
func (s *Metadata) commitDir(dst string, files map[string][]byte) error {
	tmp, err := os.MkdirTemp(filepath.Join(s.root, dirTmp), "dir-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // no-op after a successful rename
	for name, data := range files {
		p := filepath.Join(tmp, name)
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
		if err != nil {
			return err
		}
		_, err = f.Write(data)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	if err := syncDir(tmp); err != nil {
		return err
	}
	// The directory becomes read-only only once in place: renaming a directory to another
	// parent rewrites its ".." entry, which needs write permission on it (root skips the check,
	// an unprivileged user does not). A crash in between leaves a 0700 directory: harmless.
	if err := renameNoReplace(tmp, dst); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil
		}
		return err
	}
	if err := os.Chmod(dst, 0o500); err != nil {
		return err
	}
	return syncDir(filepath.Dir(dst))
}

// removeDir makes a metadata directory disappear atomically (rename into tmp), then deletes it.
// The rename goes into a fresh directory of tmp/, not to a name made from dir's: a removal killed
// before its delete leaves that name taken until gc empties tmp/, and the same record stored again
// meanwhile must still be removable (else every gc fails before it gets to tmp/).
func (s *Metadata) removeDir(dir string) error {
	// Writable first, for the rename to rewrite its ".." entry as an unprivileged user (see
	// commitDir) and for RemoveAll to empty it.
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Join(s.root, dirTmp), "rm-"+filepath.Base(filepath.Dir(dir))+"-")
	if err != nil {
		return err
	}
	if err := os.Rename(dir, filepath.Join(tmp, filepath.Base(dir))); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	return os.RemoveAll(tmp)
}

// PutLayer records a layer whose objects are all stored already (objects → layer metadata). The
// TOC must list every regular file with its digest; tarSplit is the tar-split JSON stream.
func (s *Metadata) PutLayer(ctx context.Context, l Layer, toc *chunked.TOC, tarSplit []byte) error {
	tocJSON, err := chunked.MarshalTOC(toc) // names that are not UTF-8 stay exact
	if err != nil {
		return err
	}
	entries, err := chunked.DecodeEntries(toc)
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.DiffID, err)
	}
	l.TOCSize, l.TarSplitSize = int64(len(tocJSON)), int64(len(tarSplit))
	return s.putLayer(ctx, l, entries, nil, func() ([]byte, []byte, error) {
		return CompressMetadata(tocJSON), CompressMetadata(tarSplit), nil
	})
}

// putLayer records a layer once every object its entries (the TOC being recorded, decoded)
// name is found stored: those the committed batch b (if any) wrote by its record, the others by
// a stat each. The object list and the chunk index both come from entries.
func (s *Metadata) putLayer(ctx context.Context, l Layer, entries []layerfs.Entry, b *Batch, encode func() (tocZst, tarSplitZst []byte, err error)) error {
	if err := s.requireLock(); err != nil {
		return err
	}
	dir, err := s.layerDir(l.DiffID)
	if err != nil {
		return err
	}
	if exists(dir) {
		return nil
	}
	refs := entryObjects(entries)
	objs := refDigests(refs)
	if err := s.checkObjects(l.DiffID, objs, b); err != nil {
		return err
	}
	if l.Created.IsZero() {
		l.Created = time.Now().UTC()
	}
	meta, err := json.Marshal(l)
	if err != nil {
		return err
	}
	tocZst, tarSplitZst, err := encode()
	if err != nil {
		return err
	}
	list, err := encodeObjectList(refs)
	if err != nil {
		return fmt.Errorf("layer %s: %w", l.DiffID, err)
	}
	// The object list is committed with the record, in the same directory rename: a layer is
	// never published without it.
	files := map[string][]byte{
		layerJSON:       meta,
		layerTOC:        tocZst,
		layerTarSplit:   tarSplitZst,
		layerObjectList: list,
	}
	if s.verity {
		tab, err := s.verityTable(ctx, objs, b)
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.DiffID, err)
		}
		files[layerVerity] = tab
	}
	if err := s.commitDir(dir, files); err != nil {
		return fmt.Errorf("writing layer %s: %w", l.DiffID, err)
	}
	s.indexLayerChunks(l.DiffID, entries)
	return nil
}

// verityTable is "<object sha256 hex> <fs-verity digest hex>\n" per object, sorted.
func (s *Metadata) verityTable(ctx context.Context, objs []digest.Digest, b *Batch) ([]byte, error) {
	vs := make([]verity.Digest, len(objs))
	var need []int // objects whose digest no writer of the batch computed
	for i, d := range objs {
		if v, ok := b.verity(d); ok {
			vs[i] = v
		} else {
			need = append(need, i)
		}
	}
	// Objects never change, so neither do their digests: another layer's record serves.
	recorded := s.recordedVerity(ctx, objs, need)
	buf := make([]byte, 0, len(objs)*verityLine)
	for i, d := range objs {
		v := vs[i]
		if v.IsZero() {
			if r, ok := recorded[d]; ok {
				v = r
			} else {
				f, err := s.objects.Open(ctx, d)
				if err != nil {
					return nil, err
				}
				v, err = verity.FromReader(f)
				f.Close()
				if err != nil {
					return nil, fmt.Errorf("fs-verity digest of %s: %w", d, err)
				}
			}
		}
		buf = fmt.Appendf(buf, "%s %s\n", d.Encoded(), v)
	}
	return buf, nil
}

// verityLine is the length of a line of a layer's fs-verity table: two digests in hex.
const verityLine = 64 + 1 + 2*verity.Size + 1

// recordedVerity finds the fs-verity digests that stored layers recorded for objs[i], i in need.
// It reads one layer's table at a time until all are found, searching each (sorted lines of one
// width) in place, newest table first: an update's objects are nearly all in its previous
// version's table, which is among the newest, so the tables read are those recorded since that
// version, not the store's (in digest order, a store of 200 layers of 4 images had an update
// read 45 tables, 17 MB). A table it cannot search is skipped: the digests it would have given
// are computed instead.
func (s *Metadata) recordedVerity(ctx context.Context, objs []digest.Digest, need []int) map[digest.Digest]verity.Digest {
	found := map[digest.Digest]verity.Digest{}
	if len(need) == 0 {
		return found
	}
	tables, err := s.verityTablesNewestFirst(ctx)
	if err != nil {
		return found
	}
	for _, p := range tables {
		tab, err := os.ReadFile(p)
		if err != nil || len(tab)%verityLine != 0 {
			continue
		}
		n := len(tab) / verityLine
		rest := need[:0:0]
		for _, i := range need {
			hex := objs[i].Encoded()
			k := sort.Search(n, func(k int) bool { return string(tab[k*verityLine:k*verityLine+64]) >= hex })
			if k < n && string(tab[k*verityLine:k*verityLine+64]) == hex {
				line := tab[k*verityLine : (k+1)*verityLine]
				if v, err := verity.ParseDigest(string(line[65 : verityLine-1])); err == nil && line[64] == ' ' {
					found[objs[i]] = v
					continue
				}
			}
			rest = append(rest, i)
		}
		if need = rest; len(need) == 0 {
			break
		}
	}
	return found
}

// verityTablesNewestFirst lists the layers' fs-verity tables, the most recently written first
// (one stat each: far less than reading a table).
func (s *Metadata) verityTablesNewestFirst(ctx context.Context) ([]string, error) {
	layers, err := s.Layers(ctx)
	if err != nil {
		return nil, err
	}
	type table struct {
		path string
		mod  time.Time
	}
	tables := make([]table, 0, len(layers))
	for _, l := range layers {
		dir, err := s.layerDir(l)
		if err != nil {
			continue
		}
		p := filepath.Join(dir, layerVerity)
		if fi, err := os.Stat(p); err == nil {
			tables = append(tables, table{p, fi.ModTime()})
		}
	}
	sort.SliceStable(tables, func(i, j int) bool { return tables[i].mod.After(tables[j].mod) })
	out := make([]string, len(tables))
	for i, t := range tables {
		out[i] = t.path
	}
	return out, nil
}

// VerityDigests returns the fs-verity digest of each object of a layer, as recorded when the
// layer was committed; ErrNotFound if the store recorded none (opened without WithVerity).
func (s *Metadata) VerityDigests(ctx context.Context, diffID digest.Digest) (map[digest.Digest]verity.Digest, error) {
	dir, err := s.layerDir(diffID)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, layerVerity))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("fs-verity table of layer %s: %w", diffID, errdefs.ErrNotFound)
		}
		return nil, err
	}
	m := map[digest.Digest]verity.Digest{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		obj, v, ok := strings.Cut(line, " ")
		vd, err := verity.ParseDigest(v)
		if !ok || err != nil {
			return nil, fmt.Errorf("fs-verity table of layer %s: bad line %q: %w", diffID, line, errdefs.ErrInvalid)
		}
		m[digest.NewDigestFromEncoded(digest.SHA256, obj)] = vd
	}
	return m, nil
}

// TOCObjects lists the distinct object digests a TOC references, sorted.
func TOCObjects(toc *chunked.TOC) ([]digest.Digest, error) {
	entries, err := chunked.DecodeEntries(toc)
	if err != nil {
		return nil, err
	}
	return layerfs.Objects(entries), nil
}

// Layer returns a stored layer's record.
func (s *Metadata) Layer(ctx context.Context, diffID digest.Digest) (Layer, error) {
	dir, err := s.layerDir(diffID)
	if err != nil {
		return Layer{}, err
	}
	var l Layer
	if err := readJSON(filepath.Join(dir, layerJSON), &l); err != nil {
		return Layer{}, fmt.Errorf("layer %s: %w", diffID, err)
	}
	if l.DiffID != diffID {
		return Layer{}, fmt.Errorf("layer %s: record says %s: %w", diffID, l.DiffID, errdefs.ErrInvalid)
	}
	return l, nil
}

// layerSizes returns the metadata sizes a layer's record gives, zero where it gives none.
func (s *Metadata) layerSizes(dir string) Layer {
	var l Layer
	if readJSON(filepath.Join(dir, layerJSON), &l) != nil {
		return Layer{}
	}
	return l
}

// HasLayer says whether the layer is stored.
func (s *Metadata) HasLayer(diffID digest.Digest) bool {
	dir, err := s.layerDir(diffID)
	return err == nil && exists(filepath.Join(dir, layerJSON))
}

// LayerTOC returns a stored layer's TOC.
func (s *Metadata) LayerTOC(ctx context.Context, diffID digest.Digest) (*chunked.TOC, error) {
	dir, err := s.layerDir(diffID)
	if err != nil {
		return nil, err
	}
	b, err := readZstd(filepath.Join(dir, layerTOC), s.layerSizes(dir).TOCSize)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("layer %s: %w", diffID, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("TOC of layer %s: %w", diffID, err)
	}
	toc, err := chunked.ParseTOC(b)
	if err != nil {
		return nil, fmt.Errorf("TOC of layer %s: %w", diffID, err)
	}
	return toc, nil
}

// LayerEntries returns a stored layer's entries (package layerfs), decoded from its TOC: what
// everything but the layer's export works on.
func (s *Metadata) LayerEntries(ctx context.Context, diffID digest.Digest) ([]layerfs.Entry, error) {
	toc, err := s.LayerTOC(ctx, diffID)
	if err != nil {
		return nil, err
	}
	entries, err := chunked.DecodeEntries(toc)
	if err != nil {
		return nil, fmt.Errorf("TOC of layer %s: %w", diffID, err)
	}
	return entries, nil
}

// LayerObjects lists the distinct objects a stored layer's files need, sorted: from the
// layer's object list, or its TOC when the list is missing or bad (see LayerObjectRefs).
func (s *Metadata) LayerObjects(ctx context.Context, diffID digest.Digest) ([]digest.Digest, error) {
	refs, err := s.LayerObjectRefs(ctx, diffID)
	if err != nil {
		return nil, err
	}
	return refDigests(refs), nil
}

// LayerTarSplit returns a stored layer's tar-split JSON stream.
func (s *Metadata) LayerTarSplit(ctx context.Context, diffID digest.Digest) ([]byte, error) {
	dir, err := s.layerDir(diffID)
	if err != nil {
		return nil, err
	}
	b, err := readZstd(filepath.Join(dir, layerTarSplit), s.layerSizes(dir).TarSplitSize)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("layer %s: %w", diffID, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("tar-split of layer %s: %w", diffID, err)
	}
	return b, nil
}

// LayerTarSplitReader returns a stored layer's tar-split JSON for a reader that needs it once
// and not whole (a prediction keeps only its headers). A tar-split larger than its frame's window
// is decompressed as it is read, so that only the window is held, never the whole JSON; a smaller
// one costs less decoded whole, as LayerTarSplit does. Either is bounded as LayerTarSplit is.
// Close releases the file and the decoder.
func (s *Metadata) LayerTarSplitReader(ctx context.Context, diffID digest.Digest) (io.ReadCloser, error) {
	dir, err := s.layerDir(diffID)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(dir, layerTarSplit))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("layer %s: %w", diffID, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("tar-split of layer %s: %w", diffID, err)
	}
	if size := s.layerSizes(dir).TarSplitSize; !worthStreaming(f, size) {
		f.Close()
		b, err := readZstd(f.Name(), size) // as LayerTarSplit, without reading layer.json again
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("layer %s: %w", diffID, errdefs.ErrNotFound)
			}
			return nil, fmt.Errorf("tar-split of layer %s: %w", diffID, err)
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	dec, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(maxMetaSize))
	if err != nil {
		f.Close()
		return nil, err
	}
	return &metaStream{dec: dec, f: f, r: io.LimitReader(dec, maxMetaSize+1), path: f.Name()}, nil
}

// worthStreaming says whether decompressing f as a stream holds less than decoding it whole:
// whether its first frame declares a window smaller than the recorded size (a streaming decoder
// holds a window, a whole decode the content). It leaves f at its start.
func worthStreaming(f *os.File, size int64) bool {
	hdr := make([]byte, zstd.HeaderMaxSize)
	n, _ := f.ReadAt(hdr, 0)
	var h zstd.Header
	if size <= 0 || h.Decode(hdr[:n]) != nil {
		return true // no size to compare: streaming is bounded either way
	}
	window := h.WindowSize
	if h.SingleSegment {
		window = h.FrameContentSize
	}
	return window < uint64(size)
}

// metaStream is a metadata file decompressed as it is read; a corrupt frame or a stream past
// maxMetaSize is invalid.
type metaStream struct {
	dec  *zstd.Decoder
	f    *os.File
	r    io.Reader
	n    int64
	path string
}

func (m *metaStream) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.n += int64(n)
	if m.n > maxMetaSize {
		return n, fmt.Errorf("%s: over %d bytes: %w", m.path, maxMetaSize, errdefs.ErrInvalid)
	}
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%s: %v: %w", m.path, err, errdefs.ErrInvalid)
	}
	return n, err
}

func (m *metaStream) Close() error {
	m.dec.Close()
	return m.f.Close()
}

// Layers lists the DiffIDs of all stored layers.
func (s *Metadata) Layers(ctx context.Context) ([]digest.Digest, error) {
	return listDigests(filepath.Join(s.root, dirLayers))
}

// DeleteLayer removes a layer record; objects stay until gc.
func (x *Exclusive) DeleteLayer(ctx context.Context, diffID digest.Digest) error {
	if err := x.check(); err != nil {
		return err
	}
	dir, err := x.layerDir(diffID)
	if err != nil {
		return err
	}
	if err := x.removeDir(dir); err != nil {
		return fmt.Errorf("deleting layer %s: %w", diffID, err)
	}
	x.invalidateChunks()
	return nil
}

func listDigests(dir string) ([]digest.Digest, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1) // names only: os.ReadDir makes an entry of each
	f.Close()
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	out := make([]digest.Digest, 0, len(names))
	for _, name := range names {
		d := digest.NewDigestFromEncoded(digest.SHA256, name)
		if digests.IsSHA256(d) {
			out = append(out, d)
		}
	}
	return out, nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", filepath.Base(path), errdefs.ErrNotFound)
		}
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %v: %w", path, err, errdefs.ErrInvalid)
	}
	return nil
}

// PutImage records an image from its manifest and config bytes. Every layer the config names must
// be stored already (layer metadata → image). It returns the image, whose ID is the manifest digest.
func (s *Metadata) PutImage(ctx context.Context, manifest, config []byte, opts ...ImageOption) (Image, error) {
	if err := s.requireLock(); err != nil {
		return Image{}, err
	}
	img, err := ParseImage(manifest, config)
	if err != nil {
		return Image{}, err
	}
	for _, o := range opts {
		o(&img)
	}
	if img.ConfigDiffIDs != nil && len(img.ConfigDiffIDs) != len(img.Layers) {
		return Image{}, fmt.Errorf("image %s: %d true DiffIDs for %d layers: %w", img.ID, len(img.Layers), len(img.ConfigDiffIDs), errdefs.ErrInvalid)
	}
	for _, d := range img.Layers {
		if err := checkDigest(d); err != nil {
			return Image{}, fmt.Errorf("image %s: %w", img.ID, err)
		}
		if !s.HasLayer(d) {
			return Image{}, fmt.Errorf("image %s: layer %s: %w", img.ID, d, errdefs.ErrNotFound)
		}
	}
	dir, _ := s.imageDir(img.ID)
	if exists(dir) {
		return s.Image(ctx, img.ID)
	}
	img.Imported = time.Now().UTC()
	meta, err := json.Marshal(img)
	if err != nil {
		return Image{}, err
	}
	if err := s.commitDir(dir, map[string][]byte{imageJSON: meta, manifestJSON: manifest, configJSON: config}); err != nil {
		return Image{}, fmt.Errorf("writing image %s: %w", img.ID, err)
	}
	s.addImageSummary(ctx, img)
	return img, nil
}

// ParseImage checks a manifest and its config against each other and returns the image they
// describe (Imported unset).
func ParseImage(manifest, config []byte) (Image, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(manifest, &m); err != nil {
		return Image{}, fmt.Errorf("manifest: %v: %w", err, errdefs.ErrInvalid)
	}
	id := digest.FromBytes(manifest)
	if m.Config.Digest != digest.FromBytes(config) || m.Config.Size != int64(len(config)) {
		return Image{}, fmt.Errorf("image %s: config is %s (%d bytes), manifest expects %s (%d bytes): %w",
			id, digest.FromBytes(config), len(config), m.Config.Digest, m.Config.Size, errdefs.ErrDigestMismatch)
	}
	var c ocispec.Image
	if err := json.Unmarshal(config, &c); err != nil {
		return Image{}, fmt.Errorf("image %s: config: %v: %w", id, err, errdefs.ErrInvalid)
	}
	if len(c.RootFS.DiffIDs) != len(m.Layers) {
		return Image{}, fmt.Errorf("image %s: %d layers but %d diff_ids: %w", id, len(m.Layers), len(c.RootFS.DiffIDs), errdefs.ErrInvalid)
	}
	img := Image{ID: id, Config: m.Config.Digest, Layers: c.RootFS.DiffIDs}
	for _, d := range img.Layers {
		if err := checkDigest(d); err != nil {
			return Image{}, fmt.Errorf("image %s: %w", id, err)
		}
	}
	if c.Created != nil {
		img.Created = c.Created.UTC()
	}
	return img, nil
}

// Image returns a stored image.
func (s *Metadata) Image(ctx context.Context, id digest.Digest) (Image, error) {
	dir, err := s.imageDir(id)
	if err != nil {
		return Image{}, err
	}
	var img Image
	if err := readJSON(filepath.Join(dir, imageJSON), &img); err != nil {
		return Image{}, fmt.Errorf("image %s: %w", id, err)
	}
	if img.ID != id {
		return Image{}, fmt.Errorf("image %s: record says %s: %w", id, img.ID, errdefs.ErrInvalid)
	}
	return img, nil
}

// ImageManifest and ImageConfig return the stored bytes.
func (s *Metadata) ImageManifest(ctx context.Context, id digest.Digest) ([]byte, error) {
	return s.imageFile(id, manifestJSON)
}

// ImageConfig returns the stored config bytes of an image.
func (s *Metadata) ImageConfig(ctx context.Context, id digest.Digest) ([]byte, error) {
	return s.imageFile(id, configJSON)
}

func (s *Metadata) imageFile(id digest.Digest, name string) ([]byte, error) {
	dir, err := s.imageDir(id)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("image %s: %w", id, errdefs.ErrNotFound)
	}
	return b, err
}

// Images lists the IDs of all stored images.
func (s *Metadata) Images(ctx context.Context) ([]digest.Digest, error) {
	return listDigests(filepath.Join(s.root, dirImages))
}

// DeleteImage removes an image record; its layers and objects stay until gc. A ref may name it
// (fsck reports that): callers check refs first, which the exclusive lock keeps unchanged.
func (x *Exclusive) DeleteImage(ctx context.Context, id digest.Digest) error {
	if err := x.check(); err != nil {
		return err
	}
	dir, err := x.imageDir(id)
	if err != nil {
		return err
	}
	if err := x.removeDir(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("image %s: %w", id, errdefs.ErrNotFound)
		}
		return fmt.Errorf("deleting image %s: %w", id, err)
	}
	return nil
}

// checkRefName bounds ref names; they are stored path-escaped, one file each.
func checkRefName(name string) error {
	if name == "" || len(name) > maxRefName {
		return fmt.Errorf("ref name %q: empty or over %d bytes: %w", name, maxRefName, errdefs.ErrInvalid)
	}
	for _, r := range name {
		if r < 0x21 || r == 0x7f {
			return fmt.Errorf("ref name %q: control or space character: %w", name, errdefs.ErrInvalid)
		}
	}
	return nil
}

func (s *Metadata) refPath(name string) string {
	return filepath.Join(s.root, dirRefs, url.PathEscape(name))
}

// SetRef points name at a stored image (image → ref), replacing any previous target.
func (s *Metadata) SetRef(ctx context.Context, name string, id digest.Digest) error {
	if err := s.requireLock(); err != nil {
		return err
	}
	if err := checkRefName(name); err != nil {
		return err
	}
	if _, err := s.Image(ctx, id); err != nil {
		return fmt.Errorf("ref %s: %w", name, err)
	}
	if err := writeFileAtomic(filepath.Join(s.root, dirTmp), s.refPath(name), []byte(id.String()+"\n"), 0o444); err != nil {
		return fmt.Errorf("writing ref %s: %w", name, err)
	}
	return nil
}

// Ref returns the image a name points at.
func (s *Metadata) Ref(ctx context.Context, name string) (digest.Digest, error) {
	if err := checkRefName(name); err != nil {
		return "", err
	}
	return readRef(unix.AT_FDCWD, s.refPath(name), name)
}

// Refs maps every ref name to its image. A file whose name does not unescape is left out, as is
// one removed since refs/ was listed (rmi removes refs under the shared lock) or spelled other
// than url.PathEscape spells its name (Ref cannot read it either); fsck reports those that stay.
func (s *Metadata) Refs(ctx context.Context) (map[string]digest.Digest, error) {
	dir, err := os.Open(filepath.Join(s.root, dirRefs))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	files, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	dirFD := int(dir.Fd())
	out := make(map[string]digest.Digest, len(files))
	for _, file := range files {
		name, err := url.PathUnescape(file)
		if err != nil {
			continue
		}
		if err := checkRefName(name); err != nil {
			return nil, err
		}
		d, err := readRef(dirFD, url.PathEscape(name), name)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[name] = d
	}
	return out, nil
}

// readRef reads ref name from its file, file in directory dirFD (or a path, with
// unix.AT_FDCWD). It takes three system calls where os.ReadFile takes nine, which made listing a
// store's images grow with its names. A missing file is ErrNotFound.
func readRef(dirFD int, file, name string) (digest.Digest, error) {
	var buf [2 * maxRefFile]byte
	n, err := readSmall(dirFD, file, buf[:])
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("ref %s: %w", name, errdefs.ErrNotFound)
	case err != nil:
		return "", fmt.Errorf("ref %s: reading %s: %w", name, file, err)
	case n == len(buf):
		return "", fmt.Errorf("ref %s: file over %d bytes: %w", name, maxRefFile, errdefs.ErrInvalid)
	}
	return parseRef(name, buf[:n])
}

// parseRef parses the content of ref name's file.
func parseRef(name string, b []byte) (digest.Digest, error) {
	d, err := digests.ParseSHA256(strings.TrimSpace(string(b)))
	if err != nil {
		return "", fmt.Errorf("ref %s: %v: %w", name, err, errdefs.ErrInvalid)
	}
	return d, nil
}

// maxRefFile is the largest ref file: a digest and a newline.
const maxRefFile = len("sha512:") + 128 + 1

// readSmall reads file name of directory dirFD into buf, up to len(buf) bytes. The open does not
// block (a FIFO put there would hold the caller, and its lock, forever).
func readSmall(dirFD int, name string, buf []byte) (int, error) {
	fd, err := openat(dirFD, name, unix.O_RDONLY|unix.O_NONBLOCK)
	if err != nil {
		return 0, err
	}
	r := &fdReader{fd: fd}
	defer r.Close()
	n, err := io.ReadFull(r, buf)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	return n, err
}

// DeleteRef removes a ref; the image stays until gc. It needs only the shared lock: a ref is
// the last thing written and nothing depends on it.
func (s *Metadata) DeleteRef(ctx context.Context, name string) error {
	if err := s.requireLock(); err != nil {
		return err
	}
	if err := checkRefName(name); err != nil {
		return err
	}
	p := s.refPath(name)
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("ref %s: %w", name, errdefs.ErrNotFound)
		}
		return fmt.Errorf("deleting ref %s: %w", name, err)
	}
	return syncDir(filepath.Dir(p))
}

// ResolveImage finds an image by ref name, full ID, or a unique prefix (≥ 4 hex digits) of its ID.
func (s *Metadata) ResolveImage(ctx context.Context, nameOrID string) (Image, error) {
	if checkRefName(nameOrID) == nil {
		if id, err := s.Ref(ctx, nameOrID); err == nil {
			return s.Image(ctx, id)
		} else if !errors.Is(err, errdefs.ErrNotFound) {
			return Image{}, err
		}
	}
	hex := strings.TrimPrefix(nameOrID, "sha256:")
	if len(hex) >= 4 && strings.Trim(hex, "0123456789abcdef") == "" {
		ids, err := s.Images(ctx)
		if err != nil {
			return Image{}, err
		}
		var match []digest.Digest
		for _, id := range ids {
			if strings.HasPrefix(id.Encoded(), hex) {
				match = append(match, id)
			}
		}
		if len(match) == 1 {
			return s.Image(ctx, match[0])
		}
		if len(match) > 1 {
			return Image{}, fmt.Errorf("image %q: ambiguous prefix: %w", nameOrID, errdefs.ErrInvalid)
		}
	}
	return Image{}, fmt.Errorf("image %q: %w", nameOrID, errdefs.ErrNotFound)
}
