// Package mountinfo reads /proc/PID/mountinfo: which mounts a mount namespace holds, so that Kura
// can tell its own mounts from others and find out whether a mount it recorded is still there.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Entry is one line of mountinfo (see proc(5)).
type Entry struct {
	ID, Parent int
	// Dev is the st_dev of files in the mount, as "major:minor".
	Dev string
	// Point is the mount point, unescaped, relative to the reading process's root.
	Point  string
	FSType string
	Source string
}

// Parse reads mountinfo lines; lines it cannot read are an error, not skipped, since a caller
// deciding whether a mount is gone must not guess.
func Parse(r io.Reader) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		e, err := parseLine(sc.Text())
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

func parseLine(line string) (Entry, error) {
	pre, post, ok := strings.Cut(line, " - ")
	f, g := strings.Fields(pre), strings.Fields(post)
	if !ok || len(f) < 6 || len(g) < 2 {
		return Entry{}, fmt.Errorf("mountinfo line %q: malformed", line)
	}
	id, err1 := strconv.Atoi(f[0])
	parent, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil {
		return Entry{}, fmt.Errorf("mountinfo line %q: malformed mount ID", line)
	}
	return Entry{ID: id, Parent: parent, Dev: f[2], Point: unescape(f[4]), FSType: g[0], Source: unescape(g[1])}, nil
}

// unescape undoes the kernel's octal escapes (\040 for space, \011, \012, \134).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Read parses /proc/PID/mountinfo ("self" for this process).
func Read(pid string) ([]Entry, error) {
	f, err := os.Open("/proc/" + pid + "/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f)
}

// Top returns the mount that is visible at point: of the mounts there, the one no other mount
// at the same point is stacked on.
func Top(entries []Entry, point string) (Entry, bool) {
	under := map[int]bool{}
	var at []Entry
	for _, e := range entries {
		if e.Point == point {
			at = append(at, e)
		}
	}
	for _, e := range at {
		under[e.Parent] = true
	}
	for i := len(at) - 1; i >= 0; i-- {
		if !under[at[i].ID] {
			return at[i], true
		}
	}
	return Entry{}, false
}
