package pull

import (
	"path"
	"strings"

	"github.com/kura-oci/kura/chunked"
)

// The start-up baseline of a lazy pull: the files nearly every process of a glibc-based image
// reads as it starts, before any file of its own: the dynamic loader and libc, ld.so.cache, the
// C.UTF-8 locale, iconv's module cache and the name-service configuration. A container's first
// seconds are otherwise a fill for each, one after another (dash and mkdir in a shell
// entrypoint, then the program), and they are small next to a round trip each: about 1 MB
// compressed for Debian 12, libc most of it. So a lazy pull fetches them, with the start-up
// program (lazyprogram.go), beside the placeholders (their objects get none), as a start-up
// profile (lazyprofile.go) would; an image without them loses nothing. Patterns are
// path.Match patterns on the entry's name.
var startupBaseline = []string{
	"etc/ld.so.cache",
	"etc/nsswitch.conf", "etc/gai.conf", "etc/host.conf", "etc/hosts", "etc/resolv.conf", "etc/passwd", "etc/group",
	"lib/*-linux-*/ld-linux*.so.*", "usr/lib/*-linux-*/ld-linux*.so.*", "lib64/ld-linux*.so.*", "usr/lib64/ld-linux*.so.*",
	"lib/*-linux-*/libc.so.6", "usr/lib/*-linux-*/libc.so.6", "lib64/libc.so.6", "usr/lib64/libc.so.6",
	"usr/lib/locale/C.utf8/LC_*", "usr/lib/locale/C.UTF-8/LC_*",
	"usr/lib/locale/C.utf8/LC_MESSAGES/*", "usr/lib/locale/C.UTF-8/LC_MESSAGES/*",
	"usr/lib/*-linux-*/gconv/gconv-modules.cache", "usr/lib64/gconv/gconv-modules.cache",
}

// baselineBudget bounds the compressed bytes of the baseline a pull fetches first.
const baselineBudget = 4 << 20

// firstFiles are the files of the start-up baseline in a lazily pulled layer, within
// baselineBudget.
func firstFiles(files []chunked.File) []chunked.File {
	var out []chunked.File
	var spent int64
	for _, f := range files {
		if f.Entry.Size > 0 && inBaseline(f.Entry.Name) && spent+f.Range.Length <= baselineBudget {
			out = append(out, f)
			spent += f.Range.Length
		}
	}
	return out
}

func inBaseline(name string) bool {
	base := path.Base(name)
	for i, p := range startupBaseline {
		// The literal start of the pattern's last element rules out nearly every file
		// cheaply: the TOC of a base image lists thousands.
		if !strings.HasPrefix(base, baselineBaseStarts[i]) {
			continue
		}
		if ok, _ := path.Match(p, cleanPath(name)); ok {
			return true
		}
	}
	return false
}

// baselineBaseStarts are the literal starts of the baseline patterns' last elements.
var baselineBaseStarts = func() []string {
	out := make([]string, len(startupBaseline))
	for i, p := range startupBaseline {
		base := path.Base(p)
		if j := strings.IndexAny(base, `*?[\`); j >= 0 {
			base = base[:j]
		}
		out[i] = base
	}
	return out
}()
