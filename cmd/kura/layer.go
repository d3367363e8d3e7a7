package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
)

func init() {
	layerCmd := &cobra.Command{
		Use:   "layer",
		Short: "Convert, inspect and verify zstd:chunked layer blobs",
	}

	var level int
	convertCmd := &cobra.Command{
		Use:   "convert IN OUT",
		Short: "Convert a tar layer (plain, gzip or zstd; - for stdin) to zstd:chunked and print its descriptor",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return layerConvert(cmd, args[0], args[1], level)
		},
	}
	convertCmd.Flags().IntVar(&level, "level", 10, "zstd compression level (1-22)")

	var showTOC bool
	var annFile string
	inspectCmd := &cobra.Command{
		Use:   "inspect BLOB",
		Short: "Summarise a zstd:chunked blob, or print its TOC",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return layerInspect(cmd, args[0], showTOC, annFile)
		},
	}
	inspectCmd.Flags().BoolVar(&showTOC, "toc", false, "print the decoded TOC JSON")
	inspectCmd.Flags().StringVar(&annFile, "annotations", "", "descriptor or annotations JSON `FILE` to locate the TOC by (default: the footer)")

	var descFile string
	verifyCmd := &cobra.Command{
		Use:   "verify BLOB --descriptor FILE.json",
		Short: "Check a zstd:chunked blob against its descriptor: digests, TOC, tar-split and DiffID",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return layerVerify(cmd, args[0], descFile)
		},
	}
	verifyCmd.Flags().StringVar(&descFile, "descriptor", "", "descriptor JSON `FILE` (as printed by layer convert)")
	_ = verifyCmd.MarkFlagRequired("descriptor")

	layerCmd.AddCommand(convertCmd, inspectCmd, verifyCmd)
	rootCmd.AddCommand(layerCmd)
}

func layerConvert(cmd *cobra.Command, in, out string, level int) (retErr error) {
	if level < 1 || level > 22 {
		return usageError{fmt.Errorf("--level %d: want 1-22", level)}
	}
	var src io.Reader = os.Stdin
	if in != "-" {
		f, err := os.Open(in)
		if err != nil {
			return err
		}
		defer f.Close()
		src = f
	}
	// Write next to OUT and rename, so OUT never holds a partial blob.
	tmp, err := os.CreateTemp(filepath.Dir(out), ".kura-convert-*")
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	desc, err := chunked.Convert(cmd.Context(), src, tmp, chunked.WithLevel(level))
	if err != nil {
		return fmt.Errorf("converting %s: %w", in, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return err
	}
	return printJSON(cmd.OutOrStdout(), desc)
}

// readDescriptor reads a descriptor JSON file; a file holding only an annotations object is
// accepted too (for inspect).
func readDescriptor(name string) (chunked.Descriptor, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return chunked.Descriptor{}, err
	}
	var desc chunked.Descriptor
	if err := json.Unmarshal(b, &desc); err != nil {
		return desc, fmt.Errorf("%s: %w: %w", name, errdefs.ErrInvalid, err)
	}
	if desc.Annotations == nil && desc.Digest == "" {
		var ann map[string]string
		if err := json.Unmarshal(b, &ann); err == nil {
			desc.Annotations = ann
		}
	}
	return desc, nil
}

func openBlob(name string) (*os.File, int64, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, st.Size(), nil
}

// layerSummary is what inspect prints.
type layerSummary struct {
	Size            int64  `json:"size"`
	LocatedBy       string `json:"locatedBy"`
	TOCDigest       string `json:"tocDigest"`
	TOCSize         int64  `json:"tocSize"`
	TOCUncompressed int64  `json:"tocUncompressed"`
	TarSplitSize    int64  `json:"tarSplitSize"`
	Entries         int    `json:"entries"`
	Files           int    `json:"files"`
	Chunks          int    `json:"chunks"`
	ZerosChunks     int    `json:"zerosChunks"`
	ContentBytes    int64  `json:"contentBytes"`
	ZerosBytes      int64  `json:"zerosBytes"`
	DataBytes       int64  `json:"dataBytes"`
}

func layerInspect(cmd *cobra.Command, name string, showTOC bool, annFile string) error {
	f, size, err := openBlob(name)
	if err != nil {
		return err
	}
	defer f.Close()
	var ann map[string]string
	if annFile != "" {
		desc, err := readDescriptor(annFile)
		if err != nil {
			return err
		}
		ann = desc.Annotations
		if !chunked.IsChunked(ann) {
			return fmt.Errorf("%s has no zstd:chunked annotations: %w", annFile, errdefs.ErrInvalid)
		}
	}
	l, loc, err := chunked.Open(f, size, ann)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	out := cmd.OutOrStdout()
	if showTOC {
		return printJSON(out, l.TOC)
	}
	s := layerSummary{
		Size: size, LocatedBy: "footer", TOCDigest: loc.TOCDigest.String(),
		TOCSize: loc.TOC.Length, TOCUncompressed: loc.TOCUncompressed, TarSplitSize: loc.TarSplit.Length,
		Entries: len(l.TOC.Entries), Files: len(l.Files), DataBytes: l.DataEnd,
	}
	if ann != nil {
		s.LocatedBy = "annotations"
	}
	for _, file := range l.Files {
		s.ContentBytes += file.Entry.Size
		s.Chunks += len(file.Entry.Chunks)
		for _, c := range file.Entry.Chunks {
			if c.Zeros {
				s.ZerosChunks++
				s.ZerosBytes += c.Size
			}
		}
	}
	if global.json {
		return printJSON(out, s)
	}
	format := "current (TOC + tar-split)"
	if l.TarSplit == nil {
		format = "old (TOC only, DiffID not verifiable after a partial pull)"
	}
	fmt.Fprintf(out, "blob:        %d bytes, %d in tar data frames\n", s.Size, s.DataBytes)
	fmt.Fprintf(out, "format:      %s, located by %s\n", format, s.LocatedBy)
	if s.TOCDigest != "" {
		fmt.Fprintf(out, "TOC digest:  %s\n", s.TOCDigest)
	}
	fmt.Fprintf(out, "TOC:         %d bytes (%d uncompressed), tar-split %d bytes\n", s.TOCSize, s.TOCUncompressed, s.TarSplitSize)
	fmt.Fprintf(out, "entries:     %d, %d regular files with content\n", s.Entries, s.Files)
	fmt.Fprintf(out, "chunks:      %d (%d zeros chunks, %d bytes)\n", s.Chunks, s.ZerosChunks, s.ZerosBytes)
	fmt.Fprintf(out, "content:     %d bytes\n", s.ContentBytes)
	return nil
}

func layerVerify(cmd *cobra.Command, name, descFile string) error {
	desc, err := readDescriptor(descFile)
	if err != nil {
		return err
	}
	if desc.Digest == "" {
		return usageError{fmt.Errorf("%s: descriptor has no digest", descFile)}
	}
	f, size, err := openBlob(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if size != desc.Size {
		return fmt.Errorf("%s: %d bytes, descriptor says %d: %w", name, size, desc.Size, errdefs.ErrDigestMismatch)
	}
	l, err := chunked.Verify(cmd.Context(), f, desc)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	diff := "DiffID verified from tar-split and frames"
	if l.TarSplit == nil {
		diff = "no tar-split: DiffID checked by full decompression only"
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), layerVerifyJSON{OK: true, Digest: desc.Digest, DiffID: desc.DiffID, Files: len(l.Files), TarSplit: l.TarSplit != nil})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: OK (%d files, %s)\n", name, len(l.Files), diff)
	return nil
}
