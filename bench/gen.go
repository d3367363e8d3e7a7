package main

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// genFile is a file the generator writes over (or next to) the base tree.
type genFile struct {
	data  []byte
	mode  int64
	mtime time.Time
}

// What changes between versions, and how often. Rates are percent of items
// that change in one release; an item keeps its content (and mtime) until
// the release where it changes again, as in a real site.
const (
	pageRate   = 10 // HTML pages
	imageRate  = 5  // images
	moduleRate = 15 // modules bundled into the JS file
)

// versionFiles returns the files version v adds or replaces:
//   - /var/www/html: pages, images, a JS bundle whose name carries its hash,
//     and media that accumulate (a few MB new per release);
//   - configuration: the apache site, /etc/app/app.conf, /etc/app-release;
//   - rebuilt binaries: /usr/sbin/apache2 rewritten throughout (every chunk
//     differs), mod_rewrite.so with a one-spot patch (one chunk differs), and
//     every third release libapr rewritten as a library security update.
//
// Version 0 carries the application at its first release and the base
// binaries unmodified. Everything is derived from (kind, item, release) seeds.
func versionFiles(v int, base string, shape appShape) (map[string]genFile, error) {
	files := map[string]genFile{}
	put := func(name string, data []byte, rel int) {
		files[name] = genFile{data: data, mode: 0o644, mtime: epoch.Add(time.Duration(rel) * time.Hour)}
	}
	for j := 0; j < shape.Pages; j++ {
		r := release("page", j, v, pageRate)
		put(fmt.Sprintf("var/www/html/docs/page-%03d.html", j), page(j, r), r)
	}
	for j := 0; j < shape.Images; j++ {
		r := release("image", j, v, imageRate)
		size := 20<<10 + seeded("image-size", j, 0).IntN(100<<10)
		img := randomBytes(seeded("image", j, r), size)
		copy(img, "\x89PNG\r\n\x1a\n")
		put(fmt.Sprintf("var/www/html/img/img-%03d.png", j), img, r)
	}
	bundle := jsBundle(v, shape.Modules)
	sum := sha256.Sum256(bundle)
	bundleName := fmt.Sprintf("app.%x.js", sum[:4])
	put("var/www/html/static/"+bundleName, bundle, v)
	for u := 1; u <= v; u++ {
		for k := 0; k < shape.MediaPerVersion; k++ {
			put(fmt.Sprintf("var/www/html/media/r%02d/clip-%d.webm", u, k), randomBytes(seeded("media", u, k), shape.MediaSize), u)
		}
	}
	put("var/www/html/index.html", []byte(fmt.Sprintf(
		"<!doctype html>\n<html><head><title>App 1.%d.0</title>\n<script src=\"/static/%s\"></script></head>\n<body>%s</body></html>\n",
		v, bundleName, text(seeded("index", 0, v), 2048))), v)
	put("etc/app-release", []byte(fmt.Sprintf("APP_VERSION=1.%d.0\nAPP_BUILD=%08x\n", v, seeded("build", 0, v).Uint32())), v)
	put("etc/app/app.conf", appConf(v), v)

	site := "etc/apache2/sites-available/000-default.conf"
	orig, err := os.ReadFile(filepath.Join(base, site))
	if err != nil {
		return nil, fmt.Errorf("reading base %s: %w", site, err)
	}
	put(site, append(orig, fmt.Sprintf("\n# application release\nDefine APP_VERSION 1.%d.0\n", v)...), v)

	if v == 0 {
		return files, nil
	}
	type patch struct {
		path   string
		stride int // bytes between 8-byte patches; 0 means one patch mid-file
		every  int // patched in releases divisible by this
	}
	for _, p := range []patch{
		{"usr/sbin/apache2", 4096, 1},
		{"usr/lib/apache2/modules/mod_rewrite.so", 0, 1},
		{"usr/lib/x86_64-linux-gnu/libapr-1.so.0.7.2", 8192, 3},
	} {
		last := v - v%p.every
		if last == 0 {
			continue
		}
		data, err := os.ReadFile(filepath.Join(base, p.path))
		if err != nil {
			return nil, fmt.Errorf("reading base %s: %w", p.path, err)
		}
		fi, err := os.Stat(filepath.Join(base, p.path))
		if err != nil {
			return nil, err
		}
		patchBinary(data, p.stride, last)
		files[p.path] = genFile{data: data, mode: int64(fi.Mode().Perm()), mtime: epoch.Add(time.Duration(last) * time.Hour)}
	}
	return files, nil
}

// release is the last release <= v in which item j of kind changed.
func release(kind string, j, v, ratePercent int) int {
	r := 0
	for u := 1; u <= v; u++ {
		if seeded(kind+"-change", j, u).IntN(100) < ratePercent {
			r = u
		}
	}
	return r
}

// seeded returns a PRNG determined by (kind, item, release).
func seeded(kind string, item, rel int) *rand.Rand {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s/%d/%d", kind, item, rel)))
	return rand.New(rand.NewPCG(binary.LittleEndian.Uint64(h[:8]), binary.LittleEndian.Uint64(h[8:16])))
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// vocabulary is a fixed list of pseudo-words; text drawn from it with a skewed
// distribution compresses about like prose (3-4x with zstd).
var vocabulary = func() []string {
	r := seeded("vocabulary", 0, 0)
	words := make([]string, 3000)
	for i := range words {
		n := 2 + r.IntN(9)
		b := make([]byte, n)
		for k := range b {
			b[k] = byte('a' + r.IntN(26))
		}
		words[i] = string(b)
	}
	return words
}()

func text(r *rand.Rand, n int) string {
	var sb strings.Builder
	for sb.Len() < n {
		w := vocabulary[r.IntN(1+r.IntN(len(vocabulary)))]
		sb.WriteString(w)
		switch r.IntN(14) {
		case 0:
			sb.WriteString(".\n")
		case 1:
			sb.WriteString(", ")
		default:
			sb.WriteByte(' ')
		}
	}
	return sb.String()
}

func page(j, rel int) []byte {
	size := 4<<10 + seeded("page-size", j, 0).IntN(8<<10)
	r := seeded("page", j, rel)
	return []byte(fmt.Sprintf("<!doctype html>\n<html><head><title>Page %d</title></head>\n<body><h1>%s</h1>\n<p>%s</p>\n</body></html>\n",
		j, text(r, 40), text(r, size)))
}

// jsBundle concatenates modules, each at its own last release, so a new
// bundle shares long stretches with the previous one (chunk-level reuse has
// something to find) though the file as a whole is new.
func jsBundle(v, modules int) []byte {
	var sb strings.Builder
	for m := 0; m < modules; m++ {
		r := release("module", m, v, moduleRate)
		rng := seeded("module", m, r)
		var mod strings.Builder
		fmt.Fprintf(&mod, "/* module %d r%d */\nexport function m%d(state) {\n", m, r, m)
		for mod.Len() < 15<<10 {
			fmt.Fprintf(&mod, "  state.%s = %q;\n", vocabulary[rng.IntN(len(vocabulary))], text(rng, 40))
		}
		mod.WriteString("}\n")
		sb.WriteString(mod.String())
	}
	return []byte(sb.String())
}

func appConf(v int) []byte {
	r := seeded("conf", 0, v)
	var sb strings.Builder
	fmt.Fprintf(&sb, "# application configuration, release 1.%d.0\n[server]\nlisten = 0.0.0.0:8080\nworkers = %d\n", v, 2+v%4)
	fmt.Fprintf(&sb, "[features]\n")
	for k := 0; k < 40; k++ {
		fmt.Fprintf(&sb, "%s = %v\n", vocabulary[k*7], r.IntN(2) == 1)
	}
	return []byte(sb.String())
}

// patchBinary models a rebuild: 8 bytes every stride bytes (or once in the
// middle when stride is 0) take values that depend on the release.
func patchBinary(data []byte, stride, rel int) {
	r := seeded("patch", stride, rel)
	if stride == 0 {
		if len(data) >= 16 {
			binary.LittleEndian.PutUint64(data[len(data)/2:], r.Uint64())
		}
		return
	}
	for off := 64; off+8 <= len(data); off += stride {
		binary.LittleEndian.PutUint64(data[off:], r.Uint64())
	}
}
