package chunked

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/tarstream"
)

// allocated runs f and returns the MiB it allocated.
func allocated(f func()) uint64 {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	f()
	runtime.ReadMemStats(&m1)
	return (m1.TotalAlloc - m0.TotalAlloc) >> 20
}

func repeatEntries(entry string, n int) []byte {
	return []byte(`{"version":1,"entries":[` + strings.TrimSuffix(strings.Repeat(entry+",", n), ",") + `]}`)
}

// A TOC over its entry limit is refused while it is decoded, by the fast decoder and by the
// encoding/json fallback alike: the entries past the limit never cost memory.
func TestParseTOCEntryLimit(t *testing.T) {
	for _, c := range []struct{ name, entry string }{
		{"fast", `{"type":"dir","name":"d"}`},
		{"fallback", `{"Type":"dir","name":"d"}`}, // a key in another case: encoding/json's path
		{"empty objects", `{}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := repeatEntries(c.entry, 1<<20)
			var err error
			mib := allocated(func() { _, err = parseTOC(b, 1000) })
			if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "more than 1000 entries") {
				t.Fatalf("parseTOC of 1Mi entries with a limit of 1000: %v", err)
			}
			if mib > 16 {
				t.Fatalf("refusing allocated %d MiB", mib)
			}
			toc, err := parseTOC(repeatEntries(c.entry, 1000), 1000)
			if err != nil || len(toc.Entries) != 1000 {
				t.Fatalf("1000 entries at a limit of 1000: %v", err)
			}
		})
	}
}

// The line limit grows with the compressed tar-split, up to the codec's cap.
func TestTarSplitLineLimit(t *testing.T) {
	if got := TarSplitLineLimit(300); got != limitFloor+300 {
		t.Fatalf("TarSplitLineLimit(300) = %d", got)
	}
	if got := TarSplitLineLimit(1 << 40); got != tarstream.MaxTarSplitLines {
		t.Fatalf("TarSplitLineLimit(1 TiB) = %d, want the cap %d", got, tarstream.MaxTarSplitLines)
	}
	if got := TOCEntryLimit(1 << 40); got != MaxTOCEntries {
		t.Fatalf("TOCEntryLimit(1 TiB) = %d, want the cap %d", got, MaxTOCEntries)
	}
}

// A file or chunk whose declared size its frames cannot expand to is refused at parse, zeros
// chunks included (they are never decompressed: the size alone would decide what is written).
func TestChunkLargerThanFramesRefused(t *testing.T) {
	const d = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	for _, c := range []struct {
		name string
		toc  TOC
		ok   bool
	}{
		{"zeros file", TOC{Version: 1, Entries: []Entry{{Type: TypeReg, Name: "z", Size: 1 << 30, Digest: d, Offset: 0, EndOffset: 100, ChunkType: ChunkTypeZeros}}}, false},
		{"data file", TOC{Version: 1, Entries: []Entry{{Type: TypeReg, Name: "z", Size: 1 << 30, Digest: d, Offset: 0, EndOffset: 100}}}, false},
		{"chunk", TOC{Version: 1, Entries: []Entry{
			{Type: TypeReg, Name: "z", Size: 1<<30 + 10, Digest: d, Offset: 0, EndOffset: 200, ChunkSize: 10, ChunkDigest: d},
			{Type: TypeChunk, Name: "z", Offset: 100, ChunkOffset: 10, ChunkSize: 1 << 30, ChunkDigest: d, ChunkType: ChunkTypeZeros}}}, false},
		{"at the bound", TOC{Version: 1, Entries: []Entry{{Type: TypeReg, Name: "z", Size: 100 * maxFrameExpansion, Digest: d, Offset: 0, EndOffset: 100, ChunkType: ChunkTypeZeros}}}, true},
	} {
		l := &Layer{TOC: &c.toc, DataEnd: 1000}
		err := l.index()
		if c.ok != (err == nil) || err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// rssMiB is this process's resident set.
func rssMiB(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kib, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kib >> 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// A tar-split of 128 MiB of blank lines (a few KiB of zstd) is refused as it decompresses: the
// buffer its declared size reserves is never filled, so resident memory barely moves.
func TestTarSplitBlankLinesStreamed(t *testing.T) {
	if os.Getenv(freshHeapEnv) == "" {
		// Measured in a process of its own: spans freed by earlier tests would be reused, and
		// zeroed page by page, by the 128 MiB the declared size reserves, whatever this test does.
		inFreshProcess(t, "TestTarSplitBlankLinesStreamed")
		return
	}
	// The 128 MiB are compressed piece by piece: a freed 128 MiB buffer would be reused (and
	// zeroed, page by page) by the decoder's allocation, which made the measure flaky.
	var compressed bytes.Buffer
	enc, err := zstd.NewWriter(&compressed, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	piece := bytes.Repeat([]byte(" \n"), 512<<10)
	for range 128 {
		if _, err := enc.Write(piece); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	blob, size := compressed.Bytes(), int64(128*len(piece))
	debug.FreeOSMemory()
	before := rssMiB(t)
	r := decodeTarSplitBlob(blob, size, 150<<20, TarSplitLineLimit(int64(len(blob))))
	grew := rssMiB(t) - before
	if !errors.Is(r.err, errdefs.ErrInvalid) {
		t.Fatalf("128 MiB of blank lines in %d bytes: %v", len(blob), r.err)
	}
	t.Logf("refused %d compressed bytes, RSS grew %d MiB: %v", len(blob), grew, r.err)
	if grew > 48 {
		t.Fatalf("refusing 128 MiB of blank lines made %d MiB resident", grew)
	}
}

// The most compact honest layers (empty files and directories with sequential names, as
// Convert writes them) stay within the limits, with the TOC alone (a predicted tar-split) too.
func TestCompactHonestLayerWithinLimits(t *testing.T) {
	const n = 30000
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range n {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("usr/share/x/f%07d", i), Mode: 0o644, ModTime: time.Unix(1700000000, 0)}
		if i%2 == 1 {
			h.Typeflag, h.Name = tar.TypeDir, fmt.Sprintf("usr/share/x/d%07d/", i)
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Close()
	var blob bytes.Buffer
	d, err := Convert(context.Background(), &buf, &blob)
	if err != nil {
		t.Fatal(err)
	}
	loc, err := LocateFromAnnotations(d.Annotations, d.Size)
	if err != nil {
		t.Fatal(err)
	}
	b := blob.Bytes()
	tocBlob, tsBlob := b[loc.TOC.Offset:loc.TOC.End()], b[loc.TarSplit.Offset:loc.TarSplit.End()]
	t.Logf("%d entries: %.1f blob bytes per entry (limit %d), %.1f compressed tar-split bytes per line (limit %d)",
		n, float64(loc.carrier())/n, blobBytesPerTOCEntry, float64(len(tsBlob))/float64(2*n), tarSplitBytesPerLine)
	if _, err := Parse(loc, tocBlob, tsBlob); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if _, err := ParseTOCOnly(loc, tocBlob); err != nil {
		t.Fatalf("ParseTOCOnly: %v", err)
	}
	if got := loc.carrier() / n; got < 3*blobBytesPerTOCEntry/2 {
		t.Fatalf("%d blob bytes per entry: the entry limit leaves honest layers too little room", got)
	}
}

// freshHeapEnv marks a test binary re-run by inFreshProcess.
const freshHeapEnv = "KURA_TEST_FRESH_HEAP"

// inFreshProcess runs the named test alone in a new process of this test binary and fails if it
// does not pass there.
func inFreshProcess(t *testing.T, name string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^"+name+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), freshHeapEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: "+name) {
		t.Fatalf("%s in a fresh process: %v\n%s", name, err, out)
	}
	t.Logf("in a fresh process:\n%s", out)
}
