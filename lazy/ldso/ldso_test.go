package ldso

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/elftest"
)

func TestNeeds(t *testing.T) {
	prog := elftest.File("/lib64/ld-linux-x86-64.so.2", "libone.so.1", "libc.so.6")
	info, err := Needs(bytes.NewReader(prog), int64(len(prog)))
	if err != nil {
		t.Fatal(err)
	}
	if info.Interp != "/lib64/ld-linux-x86-64.so.2" || !slices.Equal(info.Needed, []string{"libone.so.1", "libc.so.6"}) || info.Machine != elf.EM_X86_64 {
		t.Fatalf("elfNeeds = %+v", info)
	}
	text := bytes.Repeat([]byte("#!/bin/sh\necho not ELF\n"), 10)
	if info, err := Needs(bytes.NewReader(text), int64(len(text))); err != nil || info.Interp != "" || info.Needed != nil {
		t.Fatalf("a script: %+v, %v; want nothing and no error", info, err)
	}
	bad := bytes.Clone(prog)
	binary.LittleEndian.PutUint64(bad[40:], 1<<40) // section headers far past the end
	if _, err := Needs(bytes.NewReader(bad), int64(len(bad))); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("a damaged ELF file: %v; want ErrInvalid", err)
	}
}

// TestNeedsBounded: a file naming the same library over and over, or hundreds of them, yields
// each name once and at most maxNeeded of them (each resolved in the image six times over).
func TestNeedsBounded(t *testing.T) {
	var names []string
	for range 5000 {
		names = append(names, "libsame.so")
	}
	for i := range 2 * maxNeeded {
		names = append(names, fmt.Sprintf("lib%d.so", i))
	}
	names = append(names, strings.Repeat("n", maxName+1))
	prog := elftest.File("", names...)
	info, err := Needs(bytes.NewReader(prog), int64(len(prog)))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Needed) != maxNeeded || info.Needed[0] != "libsame.so" || info.Needed[1] != "lib0.so" {
		t.Fatalf("Needed has %d names starting %q; want %d, libsame.so once, then lib0.so", len(info.Needed), info.Needed[:min(3, len(info.Needed))], maxNeeded)
	}
}

// FuzzELFNeeds: elfNeeds reads files of the image, which are hostile: it must never panic or
// read past them, whatever their bytes.
func FuzzNeeds(f *testing.F) {
	f.Add(elftest.File("/lib64/ld-linux-x86-64.so.2", "libone.so.1"))
	f.Add(elftest.File("", "liba.so", "libb.so.2"))
	f.Add(elftest.File("/x"))
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := Needs(bytes.NewReader(b), int64(len(b)))
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) {
			t.Fatalf("error not ErrInvalid: %v", err)
		}
		if err != nil && (info.Interp != "" || info.Needed != nil) {
			t.Fatalf("an error with a result: %+v", info)
		}
	})
}
