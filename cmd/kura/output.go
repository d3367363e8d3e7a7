package main

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/store"
)

// The JSON that --json prints, one type per command where the package's own type is not the
// schema: docs/json.md documents every one, and TestJSONSchemas checks the binary against it.
// Field names are camelCase, every field is always present, and lists are [] when empty, never
// null, so that scripts need no special cases.

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// orEmpty is s, or an empty list where s is nil (JSON [] instead of null).
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

type importJSON struct {
	Name      string        `json:"name"`
	ID        digest.Digest `json:"id"`
	NewLayers int           `json:"newLayers"`
}

type importTarJSON struct {
	Name string        `json:"name"`
	ID   digest.Digest `json:"id"`
}

type rmiJSON struct {
	Image    digest.Digest `json:"image"`
	Untagged []string      `json:"untagged"`
	Deleted  bool          `json:"deleted"`
	// InUse counts the mounts and checkouts that keep the content after rmi --force.
	InUse int `json:"inUse"`
}

func rmiOutput(r store.Removed) rmiJSON {
	return rmiJSON{Image: r.Image, Untagged: orEmpty(r.Untagged), Deleted: r.Deleted, InUse: len(r.InUse)}
}

type checkoutJSON struct {
	Files            int `json:"files"`
	Dirs             int `json:"dirs"`
	Symlinks         int `json:"symlinks"`
	Hardlinks        int `json:"hardlinks"`
	Devices          int `json:"devices"`
	Whiteouts        int `json:"whiteouts"`
	Reflinked        int `json:"reflinked"`
	Copied           int `json:"copied"`
	Linked           int `json:"linked"`
	VariantsReplaced int `json:"variantsReplaced"`
}

func checkoutOutput(s checkout.Stats) checkoutJSON {
	return checkoutJSON{Files: s.Files, Dirs: s.Dirs, Symlinks: s.Symlinks, Hardlinks: s.Hardlinks, Devices: s.Devices,
		Whiteouts: s.Whiteouts, Reflinked: s.Reflinked, Copied: s.Copied, Linked: s.Linked, VariantsReplaced: s.VariantsReplaced}
}

// pathJSON is the answer of commands that act on one path (checkout --release, umount).
type pathJSON struct {
	Path string `json:"path"`
}

type psJSON struct {
	Kind    store.UseKind `json:"kind"`
	Image   digest.Digest `json:"image"`
	Names   []string      `json:"names"`
	Target  string        `json:"target"`
	Created time.Time     `json:"created"`
	PID     int           `json:"pid"`
	// MountID is the mount's ID in /proc/PID/mountinfo (0 for a checkout).
	MountID int `json:"mountID"`
}

type dfJSON struct {
	LogicalBytes  int64 `json:"logicalBytes"`
	PhysicalBytes int64 `json:"physicalBytes"`
	ObjectBytes   int64 `json:"objectBytes"`
	MetadataBytes int64 `json:"metadataBytes"`
	Objects       int   `json:"objects"`
	// AllocatedBytes and ObjectAllocatedBytes are what the blocks take on disk (st_blocks):
	// less than the apparent sizes where zeros are holes.
	AllocatedBytes       int64        `json:"allocatedBytes"`
	ObjectAllocatedBytes int64        `json:"objectAllocatedBytes"`
	DedupRatio           float64      `json:"dedupRatio"`
	Images               []imageUsage `json:"images"`
}

// imageUsage is one image in df --json.
type imageUsage struct {
	Names   []string      `json:"names"`
	ID      digest.Digest `json:"id"`
	Logical int64         `json:"logicalBytes"`
	// Unique is present only with df -v, which computes it.
	Unique *int64 `json:"uniqueBytes,omitempty"`
	Layers int    `json:"layers"`
}

func dfOutput(u store.Usage, verbose bool) dfJSON {
	imgs := []imageUsage{}
	for _, iu := range u.Images {
		i := imageUsage{Names: orEmpty(iu.Names), ID: iu.Image.ID, Logical: iu.Logical, Layers: len(iu.Image.Layers)}
		if verbose {
			i.Unique = &iu.Unique
		}
		imgs = append(imgs, i)
	}
	return dfJSON{LogicalBytes: u.Logical, PhysicalBytes: u.Physical, ObjectBytes: u.ObjectBytes, MetadataBytes: u.MetadataBytes,
		Objects: u.Objects, AllocatedBytes: u.Allocated, ObjectAllocatedBytes: u.ObjectAllocated, DedupRatio: u.DedupRatio(), Images: imgs}
}

// dfSummaryJSON is the default df --json: the figures store.Summary maintains.
type dfSummaryJSON struct {
	Images               int   `json:"imageCount"`
	Objects              int64 `json:"objects"`
	ObjectBytes          int64 `json:"objectBytes"`
	ObjectAllocatedBytes int64 `json:"objectAllocatedBytes"`
}

func dfSummaryOutput(s store.Summary) dfSummaryJSON {
	return dfSummaryJSON{Images: s.Images, Objects: s.Objects, ObjectBytes: s.ObjectBytes, ObjectAllocatedBytes: s.ObjectAllocated}
}

type gcJSON struct {
	Images     int   `json:"images"`
	Layers     int   `json:"layers"`
	Objects    int   `json:"objects"`
	TempFiles  int   `json:"tempFiles"`
	Variants   int   `json:"variants"`
	Composefs  int   `json:"composefs"`
	BytesFreed int64 `json:"bytesFreed"`
}

func gcOutput(r store.GCResult) gcJSON {
	return gcJSON{Images: r.Images, Layers: r.Layers, Objects: r.Objects, TempFiles: r.TempFiles, Variants: r.Variants,
		Composefs: r.Composefs, BytesFreed: r.BytesFreed}
}

type fsckJSON struct {
	Clean          bool     `json:"clean"`
	Objects        int      `json:"objects"`
	Layers         int      `json:"layers"`
	Images         int      `json:"images"`
	Refs           int      `json:"refs"`
	Variants       int      `json:"variants"`
	Problems       []string `json:"problems"`
	Repaired       int      `json:"repaired"`
	Unrepaired     []string `json:"unrepaired"`
	TempFiles      int      `json:"tempFiles"`
	LegacyVariants int      `json:"legacyVariants"`
	Unreadable     int      `json:"unreadable"`
	// TotalsNote says why df's maintained totals were not compared (empty when they were).
	TotalsNote string `json:"totalsNote,omitempty"`
}

func fsckOutput(r store.FsckReport) fsckJSON {
	return fsckJSON{Clean: r.Clean(), Objects: r.Objects, Layers: r.Layers, Images: r.Images, Refs: r.Refs, Variants: r.Variants,
		Problems: orEmpty(r.Problems), Repaired: r.Repaired, Unrepaired: orEmpty(r.Unrepaired), TempFiles: r.TempFiles,
		LegacyVariants: r.LegacyVariants, Unreadable: r.Unreadable, TotalsNote: r.TotalsNote}
}

type mountJSON struct {
	Image     digest.Digest `json:"image"`
	Target    string        `json:"target"`
	Composefs string        `json:"composefsImage"`
	Objects   []string      `json:"objectDirs"`
	Verity    mount.Verity  `json:"verity"`
	UpperDir  string        `json:"upperDir"`
	WorkDir   string        `json:"workDir"`
	Suid      bool          `json:"suid"`
	Dev       bool          `json:"dev"`
}

func mountOutput(id digest.Digest, p mount.Plan) mountJSON {
	return mountJSON{Image: id, Target: p.Target, Composefs: p.Image, Objects: orEmpty(p.ObjectDirs), Verity: p.Verity,
		UpperDir: p.UpperDir, WorkDir: p.WorkDir, Suid: p.Suid, Dev: p.Dev}
}

type layerVerifyJSON struct {
	OK       bool          `json:"ok"`
	Digest   digest.Digest `json:"digest"`
	DiffID   digest.Digest `json:"diffID"`
	Files    int           `json:"files"`
	TarSplit bool          `json:"tarSplit"`
}

// printPull prints a pull's report: the JSON report with --json; the image ID alone with
// --quiet, so that ID=$(kura pull -q REF) works as with podman; else the name, the ID and what
// the pull saved. Notes on layers pulled whole go to errOut in every mode but --json (whose
// report carries them).
func printPull(out, errOut io.Writer, rep *pull.Report, quiet bool) error {
	if global.json {
		return printJSON(out, rep)
	}
	for _, l := range rep.Layers {
		if l.Note != "" {
			fmt.Fprintf(errOut, "%s: %s\n", l.Digest.Encoded()[:12], l.Note)
		}
	}
	if quiet {
		_, err := fmt.Fprintln(out, rep.Image)
		return err
	}
	skipped := rep.BlobBytes - rep.BytesRequested
	pct := 0.0
	if rep.BlobBytes > 0 {
		pct = 100 * float64(skipped) / float64(rep.BlobBytes)
	}
	predicted := ""
	for _, l := range rep.Layers {
		if l.TarSplitPredicted {
			predicted = ", tar-split predicted"
		}
	}
	fmt.Fprintf(out, "%s %s\n", rep.Name, rep.Image)
	_, err := fmt.Fprintf(out, "blobs %s, requested %s, received %s (skipped %.2f%%), %d files and %d chunks reused%s, %.2fs\n",
		progress.HumanBytes(rep.BlobBytes), progress.HumanBytes(rep.BytesRequested), progress.HumanBytes(rep.BytesReceived), pct,
		rep.FilesReused, rep.ChunksReused, predicted, rep.Seconds)
	return err
}
