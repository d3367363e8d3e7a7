package tarsplit_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/tarsplit"
)

// A puller that has the previous version of a layer predicts the new version's tar-split from
// the new TOC instead of fetching it, and fetches it only if the prediction fails.
func ExamplePredict() {
	v1 := map[string]string{"etc/hostname": "kura\n", "etc/motd": "hello\n"}
	v2 := map[string]string{"etc/hostname": "kura\n", "etc/motd": "hello, world\n"}

	// The stored layer: its entries and tar-split, as store.LayerEntries and
	// store.LayerTarSplit give.
	_, _, old := metadata(tarOf(v1))
	// The new version's TOC, as fetched and parsed.
	l, tsDigest, real := metadata(tarOf(v2))

	// Content no stored layer has: the puller has just fetched it, so it can read it back.
	fetched := map[digest.Digest][]byte{digest.FromString(v2["etc/motd"]): []byte(v2["etc/motd"])}
	crc := tarsplit.OpenCRC(func(d digest.Digest) (io.ReadCloser, error) {
		b, ok := fetched[d]
		if !ok {
			return nil, errdefs.ErrNotFound
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	})
	compressed, ts, err := tarsplit.Predict(l.Entries, tsDigest, []tarsplit.Known{old}, crc)
	switch {
	case errors.Is(err, errdefs.ErrDigestMismatch):
		fmt.Println("wrong prediction: fetch the tar-split")
	case err != nil:
		fmt.Println("no prediction, fetch the tar-split:", err)
	default:
		fmt.Println("predicted:", len(compressed) > 0, bytes.Equal(ts, real.TarSplit))
	}
	// Output: predicted: true true
}

// tarOf writes files with Go's archive/tar, sorted by name.
func tarOf(files map[string]string) []byte {
	var entries []tartest.Entry
	for _, name := range slices.Sorted(maps.Keys(files)) {
		entries = append(entries, tartest.File(name, files[name]).Time(time.Unix(1714564800, 0)))
	}
	var buf bytes.Buffer
	if err := tartest.Write(&buf, entries...); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

// metadata converts a tar and returns the layer, its TOC's tar-split digest and the layer as a
// store would know it, as a puller sees them.
func metadata(tarBytes []byte) (*chunked.Layer, string, tarsplit.Known) {
	var blob bytes.Buffer
	if _, err := chunked.Convert(context.Background(), bytes.NewReader(tarBytes), &blob); err != nil {
		panic(err)
	}
	b := blob.Bytes()
	loc, err := chunked.LocateFromFooter(b[len(b)-chunked.FooterFetchSize:], int64(len(b)))
	if err != nil {
		panic(err)
	}
	l, err := chunked.Parse(loc, b[loc.TOC.Offset:loc.TOC.End()], b[loc.TarSplit.Offset:loc.TarSplit.End()])
	if err != nil {
		panic(err)
	}
	return l, l.TOC.TarSplitDigest, tarsplit.Known{Entries: l.Entries, TarSplit: l.TarSplit}
}
