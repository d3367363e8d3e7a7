package chunked

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layername"
)

// TestTarSplitNameNotInTOC (issue 13 case 8): a TOC cannot carry a name that is not UTF-8, so
// the TOC/tar-split check says so with layername.ErrTOCInexact (the pull's cue for a full pull),
// not as hostile input.
func TestTarSplitNameNotInTOC(t *testing.T) {
	var blob bytes.Buffer
	desc, err := Convert(context.Background(), bytes.NewReader(oddTar(t)), &blob)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Verify(context.Background(), bytes.NewReader(blob.Bytes()), desc)
	if !errors.Is(err, layername.ErrTOCInexact) || errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("verify of a layer with a name that is not UTF-8: %v; want ErrTOCInexact, not ErrInvalid", err)
	}
}

// TestMarshalTOCKeepsNames: a store's TOC gives back names and link targets byte for byte.
func TestMarshalTOCKeepsNames(t *testing.T) {
	toc := &TOC{Version: 1, Entries: []Entry{
		{Type: TypeReg, Name: "caf\xe9"},
		{Type: TypeSymlink, Name: "ok", Linkname: "\xff\xfe"},
		{Type: TypeReg, Name: "plain \ufffd"}, // a real U+FFFD is UTF-8 and stays as it is
	}}
	b, err := MarshalTOC(toc)
	if err != nil {
		t.Fatal(err)
	}
	if toc.Entries[0].NameRaw != nil {
		t.Fatal("MarshalTOC changed its argument")
	}
	got, err := ParseTOC(b)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range got.Entries {
		w := toc.Entries[i]
		if e.Name != w.Name || e.Linkname != w.Linkname || e.NameRaw != nil || e.LinknameRaw != nil {
			t.Errorf("entry %d: %q>%q, want %q>%q", i, e.Name, e.Linkname, w.Name, w.Linkname)
		}
	}
	bad := &TOC{Version: 1, Entries: []Entry{{Type: TypeReg, Name: "f", Xattrs: map[string]string{"user.\xff": ""}}}}
	if _, err := MarshalTOC(bad); !errors.Is(err, layername.ErrTOCInexact) {
		t.Fatalf("an xattr name that is not UTF-8: %v", err)
	}
}

// TestParseTOCRawNameMustAgree: kura.nameRaw may only restore what the name stands for; a TOC
// whose two names disagree is hostile.
func TestParseTOCRawNameMustAgree(t *testing.T) {
	for _, raw := range []string{`"Li4vZXZpbA=="` /* "../evil", UTF-8 */, `"/w=="` /* \xff, but name is "x" */} {
		j := `{"version":1,"entries":[{"type":"reg","name":"x","kura.nameRaw":` + raw + `}]}`
		if _, err := ParseTOC([]byte(j)); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("nameRaw %s: %v, want ErrInvalid", raw, err)
		}
	}
}

// TestConvertGitArchive (issue 13 case 11): a pax global header converts, gets no TOC entry,
// and the blob verifies (DiffID rebuilt exactly, partial-pull checks included).
func TestConvertGitArchive(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
		PAXRecords: map[string]string{"comment": strings.Repeat("c0ffee", 7)}})
	tw.WriteHeader(&tar.Header{Name: "repo/README", Mode: 0o644, Size: 5})
	tw.Write([]byte("hello"))
	tw.Close()
	var blob bytes.Buffer
	desc, err := Convert(context.Background(), bytes.NewReader(buf.Bytes()), &blob)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Verify(context.Background(), bytes.NewReader(blob.Bytes()), desc)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.TOC.Entries) != 1 || l.TOC.Entries[0].Name != "repo/README" {
		t.Fatalf("TOC entries %+v", l.TOC.Entries)
	}
}

// oddTar is a tar whose names exercise the JSON escapes and tar-split's name_raw.
func oddTar(t testing.TB) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := []string{"plain", `quote"d`, `back\slash`, "html<&>", "tab\tname", "ünïcode", "\xff\xferaw", "long/" + string(bytes.Repeat([]byte("n"), 300))}
	for i, n := range names {
		body := bytes.Repeat([]byte{byte(i)}, i*700)
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.WriteHeader(&tar.Header{Name: "dir/", Mode: 0o755, Typeflag: tar.TypeDir})
	tw.Close()
	return buf.Bytes()
}
