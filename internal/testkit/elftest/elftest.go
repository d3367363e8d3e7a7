// Package elftest makes small ELF files for tests of what reads them.
package elftest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
)

// File is a minimal 64-bit x86-64 ELF file with a program interpreter (if interp is not
// empty) and a dynamic section needing the libraries named, padded with filler so that its
// frames are not the only bytes of the layer.
func File(interp string, needed ...string) []byte {
	le := binary.LittleEndian
	var dynstr bytes.Buffer
	dynstr.WriteByte(0)
	var dyn []elf.Dyn64
	for _, n := range needed {
		dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_NEEDED), Val: uint64(dynstr.Len())})
		dynstr.WriteString(n + "\x00")
	}
	dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_NULL)})
	var dynb bytes.Buffer
	binary.Write(&dynb, le, dyn)
	shstr := []byte("\x00.dynstr\x00.dynamic\x00.shstrtab\x00.interp\x00")
	var phnum uint16
	if interp != "" {
		phnum = 1
	}
	off := uint64(64 + 56*int(phnum))
	interpOff := off
	if interp != "" {
		off += uint64(len(interp) + 1)
	}
	dynstrOff := off
	off += uint64(dynstr.Len())
	dynOff := (off + 7) &^ 7
	off = dynOff + uint64(dynb.Len())
	shstrOff := off
	off += uint64(len(shstr))
	filler := bytes.Repeat([]byte("not really machine code "), 200)
	off += uint64(len(filler))
	shOff := (off + 7) &^ 7
	var b bytes.Buffer
	binary.Write(&b, le, elf.Header64{
		Ident: [16]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)},
		Type:  uint16(elf.ET_DYN), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Phoff: 64, Shoff: shOff, Ehsize: 64, Phentsize: 56, Phnum: phnum, Shentsize: 64, Shnum: 5, Shstrndx: 3,
	})
	if interp != "" {
		binary.Write(&b, le, elf.Prog64{Type: uint32(elf.PT_INTERP), Flags: uint32(elf.PF_R), Off: interpOff,
			Filesz: uint64(len(interp) + 1), Memsz: uint64(len(interp) + 1), Align: 1})
		b.WriteString(interp + "\x00")
	}
	b.Write(dynstr.Bytes())
	b.Write(make([]byte, dynOff-uint64(b.Len())))
	b.Write(dynb.Bytes())
	b.Write(shstr)
	b.Write(filler)
	b.Write(make([]byte, shOff-uint64(b.Len())))
	binary.Write(&b, le, []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_STRTAB), Off: dynstrOff, Size: uint64(dynstr.Len()), Addralign: 1},
		{Name: 9, Type: uint32(elf.SHT_DYNAMIC), Off: dynOff, Size: uint64(dynb.Len()), Link: 1, Entsize: 16, Addralign: 8},
		{Name: 18, Type: uint32(elf.SHT_STRTAB), Off: shstrOff, Size: uint64(len(shstr)), Addralign: 1},
		{Name: 28, Type: uint32(elf.SHT_PROGBITS), Off: interpOff, Size: uint64(len(interp) + 1), Addralign: 1},
	})
	return b.Bytes()
}
