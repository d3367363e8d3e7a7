// Package ldso reads what the dynamic loader loads for an ELF file (its interpreter and
// needed libraries) and where it looks for them by default: what a lazy pull fetches along with
// a program so that its libraries cost no round trip each.
package ldso

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"

	"github.com/kura-oci/kura/errdefs"
)

// maxELFSize bounds the files Needs parses: larger ones are no program's libraries worth
// fetching ahead, and debug/elf's reads stay within the file. maxDynamic bounds the dynamic
// section and its string table read (real ones take kilobytes; a file whose are larger is read
// as needing nothing), maxNeeded the distinct libraries kept (programs need tens), maxName the
// length of a library's name (NAME_MAX).
const (
	maxELFSize = 1 << 30
	maxDynamic = 4 << 20
	maxNeeded  = 256
	maxName    = 255
)

// Info is what ld.so loads for an ELF file: its program interpreter (PT_INTERP; "" for none)
// and the libraries it needs (DT_NEEDED), in order, and the file's machine.
type Info struct {
	Interp  string
	Needed  []string
	Machine elf.Machine
}

// Needs reads Info from the file r of size bytes. A file that is not ELF gives nothing
// and no error; a damaged or hostile one an ErrInvalid error (debug/elf bounds what it reads
// by the file's size; a panic in it is turned into that error too).
func Needs(r io.ReaderAt, size int64) (info Info, err error) {
	var magic [4]byte
	if size < 64 || size > maxELFSize {
		return Info{}, nil
	}
	if _, err := r.ReadAt(magic[:], 0); err != nil || string(magic[:]) != elf.ELFMAG {
		return Info{}, nil
	}
	defer func() {
		if p := recover(); p != nil {
			info, err = Info{}, fmt.Errorf("ELF file: %v: %w", p, errdefs.ErrInvalid)
		}
	}()
	f, err := elf.NewFile(io.NewSectionReader(r, 0, size))
	if err != nil {
		return Info{}, fmt.Errorf("ELF file: %v: %w", err, errdefs.ErrInvalid)
	}
	info.Machine = f.Machine
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP && p.Filesz > 0 && p.Filesz < 4096 {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return Info{}, fmt.Errorf("ELF file: interpreter: %v: %w", err, errdefs.ErrInvalid)
			}
			info.Interp = string(bytes.TrimRight(b, "\x00"))
		}
	}
	// The sections ImportedLibraries reads: the dynamic section (by type, whatever its name)
	// and its string table; compressed ones are refused, as their sizes are not what is read.
	ds := f.SectionByType(elf.SHT_DYNAMIC)
	if ds == nil {
		return info, nil // static, or no section headers to find DT_NEEDED by
	}
	if int(ds.Link) >= len(f.Sections) || !smallSection(ds) || !smallSection(f.Sections[ds.Link]) {
		return info, nil
	}
	needed, err := f.ImportedLibraries()
	if err != nil {
		return Info{}, fmt.Errorf("ELF file: needed libraries: %v: %w", err, errdefs.ErrInvalid)
	}
	seen := make(map[string]bool, min(len(needed), maxNeeded))
	for _, name := range needed {
		if len(info.Needed) == maxNeeded {
			break
		}
		if name != "" && len(name) <= maxName && !seen[name] {
			seen[name] = true
			info.Needed = append(info.Needed, name)
		}
	}
	return info, nil
}

// smallSection says whether s is read as it is stored and within maxDynamic.
func smallSection(s *elf.Section) bool {
	return s.Flags&elf.SHF_COMPRESSED == 0 && s.Size <= maxDynamic && s.FileSize <= maxDynamic
}

// SearchDirs are the directories, relative to the root, where ld.so looks for a needed library
// of a file of machine m by default (no ld.so.cache, RPATH or LD_LIBRARY_PATH): the Debian
// multiarch directories of the machine, then lib64, lib and their usr/ twins.
func SearchDirs(m elf.Machine) []string {
	var dirs []string
	if t := multiarch(m); t != "" {
		dirs = append(dirs, "lib/"+t, "usr/lib/"+t)
	}
	return append(dirs, "lib64", "usr/lib64", "lib", "usr/lib")
}

// multiarch is the Debian multiarch triplet of an ELF machine.
func multiarch(m elf.Machine) string {
	switch m {
	case elf.EM_X86_64:
		return "x86_64-linux-gnu"
	case elf.EM_AARCH64:
		return "aarch64-linux-gnu"
	case elf.EM_386:
		return "i386-linux-gnu"
	case elf.EM_PPC64:
		return "powerpc64le-linux-gnu"
	case elf.EM_S390:
		return "s390x-linux-gnu"
	case elf.EM_RISCV:
		return "riscv64-linux-gnu"
	case elf.EM_ARM:
		return "arm-linux-gnueabihf"
	}
	return ""
}
