package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/internal/digests"
)

// imageSummariesFile caches what `kura images` shows of each stored image besides its names:
// its creation time, its number of layers and its logical size. All three follow from the image
// ID (an image's record and its layers' records never change), so a row is never stale, only
// missing (an image stored since the file was written) or left over (an image removed since);
// the listing of images/ says which rows apply. Without it, listing images reads one image and
// one layer record per image, a cost that grew with the store (issue 19: 9 ms for 10 images, 18
// ms for 200). Any listing that found the file incomplete or with left-over rows writes it anew
// (temp file, fsync, rename, under the shared lock; writers race harmlessly, as every row any of
// them writes is true). Lines: "kura-image-summaries 1", then per image "<ID> <created, RFC 3339
// with nanoseconds, or -> <layers> <logical bytes>", then "end <rows>". A file that does not
// parse is ignored by the listing (and rewritten), and reported by fsck.
const imageSummariesFile = "image-summaries"

const imageSummariesHeader = "kura-image-summaries 1"

// ImageSummary is what `kura images` lists of an image.
type ImageSummary struct {
	ID    digest.Digest
	Names []string
	// Created comes from the config (zero when absent).
	Created time.Time
	Layers  int
	// Logical is the sum of the image's regular file sizes over all its layers.
	Logical int64
}

// ImageSummaries lists the images with their names, creation times, layer counts and logical
// sizes: what `kura images` shows. The names come from refs/, the rest from imageSummariesFile,
// and from the records of the images it lacks, so listing reads one file per name, not records
// per image. It takes the shared lock.
func (s *Store) ImageSummaries(ctx context.Context) ([]ImageSummary, error) {
	unlock, err := s.RLock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	names, err := s.NamesByImage(ctx)
	if err != nil {
		return nil, err
	}
	ids, err := s.Images(ctx)
	if err != nil {
		return nil, err
	}
	cached, cerr := s.readImageSummaries()
	layerSize := map[digest.Digest]int64{}
	out := make([]ImageSummary, 0, len(ids))
	hits := 0
	for _, id := range ids {
		sum, ok := cached[id]
		if ok {
			hits++
		} else if sum, err = s.imageSummary(ctx, id, layerSize); err != nil {
			return nil, err
		}
		sum.Names = names[id]
		out = append(out, sum)
	}
	damaged := cerr != nil && !errors.Is(cerr, fs.ErrNotExist)
	if (damaged || hits != len(ids) || hits != len(cached)) && !s.readOnly {
		_ = s.writeImageSummaries(out) // a cache: the next listing tries again
	}
	return out, nil
}

// NamesByImage maps each image a ref names to its names, sorted.
func (s *Metadata) NamesByImage(ctx context.Context) (map[digest.Digest][]string, error) {
	refs, err := s.Refs(ctx)
	if err != nil {
		return nil, err
	}
	names := map[digest.Digest][]string{}
	for n, id := range refs {
		names[id] = append(names[id], n)
	}
	for _, ns := range names {
		slices.Sort(ns)
	}
	return names, nil
}

// imageSummary is an image's summary from its records (no names); layerSize caches the layers'
// content sizes across calls.
func (s *Metadata) imageSummary(ctx context.Context, id digest.Digest, layerSize map[digest.Digest]int64) (ImageSummary, error) {
	img, err := s.Image(ctx, id)
	if err != nil {
		return ImageSummary{}, err
	}
	return s.summaryOf(ctx, img, layerSize)
}

func (s *Metadata) summaryOf(ctx context.Context, img Image, layerSize map[digest.Digest]int64) (ImageSummary, error) {
	logical, err := s.logicalSize(ctx, img, layerSize)
	return ImageSummary{ID: img.ID, Created: img.Created, Layers: len(img.Layers), Logical: logical}, err
}

// addImageSummary adds the row of an image just recorded to imageSummariesFile, so that the
// listing after a pull reads no record. Only a file that exists and parses is added to (else the
// next listing writes it whole), and a failure only leaves the row to that listing.
func (s *Metadata) addImageSummary(ctx context.Context, img Image) {
	cached, err := s.readImageSummaries()
	if err != nil {
		return
	}
	if cached[img.ID], err = s.summaryOf(ctx, img, map[digest.Digest]int64{}); err != nil {
		return
	}
	sums := slices.SortedFunc(maps.Values(cached), func(a, b ImageSummary) int { return strings.Compare(string(a.ID), string(b.ID)) })
	_ = s.writeImageSummaries(sums)
}

// logicalSize is the sum of the content sizes of img's layers; layerSize caches them across calls.
func (s *Metadata) logicalSize(ctx context.Context, img Image, layerSize map[digest.Digest]int64) (int64, error) {
	var n int64
	for _, l := range img.Layers {
		size, ok := layerSize[l]
		if !ok {
			meta, err := s.Layer(ctx, l)
			if err != nil {
				return 0, err
			}
			size, layerSize[l] = meta.ContentSize, meta.ContentSize
		}
		n += size
	}
	return n, nil
}

// readImageSummaries reads imageSummariesFile: ErrNotExist when there is none, another error when
// it does not parse.
func (s *Metadata) readImageSummaries() (map[digest.Digest]ImageSummary, error) {
	b, err := os.ReadFile(filepath.Join(s.root, imageSummariesFile))
	if err != nil {
		return nil, err
	}
	return parseImageSummaries(b)
}

// parseImageSummaries parses imageSummariesFile's bytes (see there), refusing anything else.
func parseImageSummaries(b []byte) (map[digest.Digest]ImageSummary, error) {
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) < 3 || string(lines[0]) != imageSummariesHeader || len(lines[len(lines)-1]) != 0 {
		return nil, errors.New("image summaries: not a summaries file, or cut short")
	}
	rows := lines[1 : len(lines)-2]
	end := string(lines[len(lines)-2])
	if end != "end "+strconv.Itoa(len(rows)) {
		return nil, fmt.Errorf("image summaries: last line %.40q, want \"end %d\"", end, len(rows))
	}
	out := make(map[digest.Digest]ImageSummary, len(rows))
	for i, line := range rows {
		sum, err := parseImageSummary(line)
		if err != nil {
			return nil, fmt.Errorf("image summaries, row %d: %w", i+1, err)
		}
		if _, dup := out[sum.ID]; dup {
			return nil, fmt.Errorf("image summaries, row %d: image %s listed twice", i+1, sum.ID)
		}
		out[sum.ID] = sum
	}
	return out, nil
}

func parseImageSummary(line []byte) (ImageSummary, error) {
	f := bytes.Split(line, []byte(" "))
	if len(f) != 4 {
		return ImageSummary{}, fmt.Errorf("%d fields, want 4", len(f))
	}
	id := digest.Digest(f[0])
	if !digests.IsSHA256(id) {
		return ImageSummary{}, fmt.Errorf("image ID %.80q", f[0])
	}
	var created time.Time
	if string(f[1]) != "-" {
		var err error
		if created, err = time.Parse(time.RFC3339Nano, string(f[1])); err != nil || created.IsZero() {
			return ImageSummary{}, fmt.Errorf("created %.40q", f[1])
		}
	}
	layers, err := strconv.Atoi(string(f[2]))
	if err != nil || layers < 0 {
		return ImageSummary{}, fmt.Errorf("layers %.40q", f[2])
	}
	logical, err := strconv.ParseInt(string(f[3]), 10, 64)
	if err != nil || logical < 0 {
		return ImageSummary{}, fmt.Errorf("logical size %.40q", f[3])
	}
	return ImageSummary{ID: id, Created: created, Layers: layers, Logical: logical}, nil
}

// formatImageSummaries is the file parseImageSummaries reads (names are not part of it).
func formatImageSummaries(sums []ImageSummary) []byte {
	b := make([]byte, 0, len(imageSummariesHeader)+len(sums)*128+16)
	b = append(b, imageSummariesHeader+"\n"...)
	for _, sum := range sums {
		b = append(b, sum.ID...)
		b = append(b, ' ')
		if sum.Created.IsZero() {
			b = append(b, '-')
		} else {
			b = sum.Created.AppendFormat(b, time.RFC3339Nano)
		}
		b = append(b, ' ')
		b = strconv.AppendInt(b, int64(sum.Layers), 10)
		b = append(b, ' ')
		b = strconv.AppendInt(b, sum.Logical, 10)
		b = append(b, '\n')
	}
	b = append(b, "end "...)
	b = strconv.AppendInt(b, int64(len(sums)), 10)
	return append(b, '\n')
}

func (s *Metadata) writeImageSummaries(sums []ImageSummary) error {
	return writeFileAtomic(filepath.Join(s.root, dirTmp), filepath.Join(s.root, imageSummariesFile), formatImageSummaries(sums), 0o444)
}

// imageSummaries is fsck's check of imageSummariesFile: it must parse, and each row of a
// stored image must be what the records say. Repair removes a file that fails (the next listing
// writes it anew).
func (f *fsck) imageSummaries(ctx context.Context) error {
	cached, err := f.s.readImageSummaries()
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	why := ""
	if err != nil {
		why = err.Error()
	} else {
		ids, err := f.s.Images(ctx)
		if err != nil {
			return err
		}
		layerSize := map[digest.Digest]int64{}
		for _, id := range ids {
			got, ok := cached[id]
			if !ok {
				continue
			}
			want, err := f.s.imageSummary(ctx, id, layerSize)
			if err != nil {
				continue // the records' own check reports it
			}
			if !got.Created.Equal(want.Created) || got.Layers != want.Layers || got.Logical != want.Logical {
				why = fmt.Sprintf("image summaries: image %s is listed as created %v, %d layers, %d bytes; its records say %v, %d, %d",
					id, got.Created, got.Layers, got.Logical, want.Created, want.Layers, want.Logical)
				break
			}
		}
	}
	if why == "" {
		return nil
	}
	f.problem("%s", why)
	if f.opts.Repair {
		f.fix("removing the image summaries", os.Remove(filepath.Join(f.s.root, imageSummariesFile)))
	}
	return nil
}
