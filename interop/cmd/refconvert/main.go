// Command refconvert converts a tar to zstd:chunked with the reference implementation
// (go.podman.io/storage's compressor), for benchmarks against kura layer convert.
//
//	refconvert [-level N] IN OUT
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"

	"go.podman.io/storage/pkg/chunked/compressor"
)

func main() {
	level := flag.Int("level", 10, "zstd level")
	flag.Parse()
	if flag.NArg() != 2 {
		fmt.Fprintln(os.Stderr, "usage: refconvert [-level N] IN OUT")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), flag.Arg(1), *level); err != nil {
		fmt.Fprintln(os.Stderr, "refconvert:", err)
		os.Exit(1)
	}
}

func run(in, out string, level int) error {
	src, err := os.Open(in)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(out)
	if err != nil {
		return err
	}
	defer dst.Close()
	bw := bufio.NewWriterSize(dst, 1<<20)
	ann := map[string]string{}
	w, err := compressor.ZstdCompressor(bw, ann, &level)
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, src); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	for k, v := range ann {
		fmt.Printf("%s=%s\n", k, v)
	}
	return dst.Sync()
}
