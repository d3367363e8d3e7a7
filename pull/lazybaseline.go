package pull

import (
	"path"
	"strings"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/composefs"
)

// The start-up baseline of a lazy pull: the files nearly every process of a glibc-based image
// reads as it starts, before any file of its own: the dynamic loader and libc, ld.so.cache, the
// C.UTF-8 locale, iconv's module cache and the name-service configuration. A container's first
// seconds are otherwise a fill for each, one after another (dash and mkdir in a shell
// entrypoint, then the program), and they are small next to a round trip each: about 1 MB
// compressed for Debian 12, libc most of it. So a lazy pull fetches them with the files the
// composefs image inlines, before it makes the placeholders (a stored object needs none), as
// a start-up profile (lazyprofile.go) would; an image without them loses nothing. Patterns are
// path.Match patterns on the entry's name.
var startupBaseline = []string{
	"etc/ld.so.cache",
	"etc/nsswitch.conf", "etc/gai.conf", "etc/host.conf", "etc/passwd", "etc/group",
	"lib/*-linux-*/ld-linux*.so.*", "usr/lib/*-linux-*/ld-linux*.so.*", "lib64/ld-linux*.so.*", "usr/lib64/ld-linux*.so.*",
	"lib/*-linux-*/libc.so.6", "usr/lib/*-linux-*/libc.so.6", "lib64/libc.so.6", "usr/lib64/libc.so.6",
	"usr/lib/locale/C.utf8/LC_*", "usr/lib/locale/C.UTF-8/LC_*",
	"usr/lib/*-linux-*/gconv/gconv-modules.cache", "usr/lib64/gconv/gconv-modules.cache",
}

// baselineBudget bounds the compressed bytes of the baseline a pull fetches first.
const baselineBudget = 4 << 20

// firstFiles are the files of a lazily pulled layer fetched before it is mountable: those the
// composefs image inlines (building it reads them) and the start-up baseline.
func firstFiles(files []chunked.File) []chunked.File {
	var out []chunked.File
	var spent int64
	for _, f := range files {
		switch {
		case f.Entry.Size <= 0:
		case f.Entry.Size <= composefs.InlineThreshold:
			out = append(out, f)
		case inBaseline(f.Entry.Name) && spent+f.Range.Length <= baselineBudget:
			out = append(out, f)
			spent += f.Range.Length
		}
	}
	return out
}

func inBaseline(name string) bool {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	for _, p := range startupBaseline {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}
