package imageref

import (
	"errors"
	"testing"

	"github.com/kura-oci/kura/errdefs"
)

func TestParseArchive(t *testing.T) {
	good := map[string]ArchiveRef{
		"docker-archive:/a/b.tar":               {Transport: "docker-archive", Path: "/a/b.tar"},
		"docker-archive:b.tar:localhost/app:v1": {Transport: "docker-archive", Path: "b.tar", Ref: "localhost/app:v1"},
		"oci-archive:/x.tar:v2":                 {Transport: "oci-archive", Path: "/x.tar", Ref: "v2"},
		"dir:/tmp/with:colon":                   {Transport: "dir", Path: "/tmp/with:colon"},
	}
	for s, want := range good {
		got, ok, err := ParseArchive(s)
		if !ok || err != nil || got != want || got.String() != s {
			t.Errorf("%s: %+v %v %v, want %+v", s, got, ok, err, want)
		}
	}
	for _, s := range []string{"docker://a/b", "oci:/x", "busybox", "containers-storage:x"} {
		if _, ok, _ := ParseArchive(s); ok {
			t.Errorf("%s taken for an archive", s)
		}
	}
	for _, s := range []string{"dir:", "oci-archive:", "docker-archive::tag"} {
		if _, ok, err := ParseArchive(s); !ok || !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v, want invalid", s, err)
		}
	}
	// Parse, used by every other command, still calls them unsupported.
	if _, err := Parse("dir:/x"); !errors.Is(err, errdefs.ErrUnsupported) {
		t.Errorf("Parse dir: %v", err)
	}
}
