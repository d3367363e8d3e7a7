package snapshotter

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/kura-oci/kura/errdefs"
)

// A filter is containerd's filter syntax reduced to what containerd and its snapshotter test
// suite ask a snapshotter for: a comma-separated conjunction of FIELD==VALUE, FIELD!=VALUE or
// FIELD alone (present and not empty), where FIELD is name, parent, kind or labels.KEY (KEY may
// be double-quoted), and VALUE may be double-quoted. containerd 1.6's metadata store lists with
// `labels."containerd.io/snapshot.ref"==TARGET,parent==PARENT` after a remote Prepare answered
// AlreadyExists. The regular-expression operator ~= is refused, not ignored.
type filter []condition

type condition struct{ field, op, value string }

func parseFilter(s string) (filter, error) {
	var f filter
	for _, part := range strings.Split(s, ",") {
		op := "=="
		field, value, ok := strings.Cut(part, op)
		if !ok {
			op = "!="
			if field, value, ok = strings.Cut(part, op); !ok {
				op, field = "", part
			}
		}
		if strings.Contains(field, "~=") {
			return nil, fmt.Errorf("snapshotter: filter %q: ~= is not implemented: %w", s, errdefs.ErrUnsupported)
		}
		field, value = strings.TrimSpace(field), strings.TrimSpace(value)
		if k, ok := strings.CutPrefix(field, "labels."); ok {
			field = "labels." + unquote(k)
		} else if field != "name" && field != "parent" && field != "kind" {
			return nil, fmt.Errorf("snapshotter: filter %q: field %q: %w", s, field, errdefs.ErrUnsupported)
		}
		f = append(f, condition{field: field, op: op, value: unquote(value)})
	}
	return f, nil
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		if u, err := strconv.Unquote(s); err == nil {
			return u
		}
	}
	return s
}

func (f filter) match(name string, r *record) bool {
	for _, c := range f {
		var have string
		present := true
		switch {
		case c.field == "name":
			have = name
		case c.field == "parent":
			have = r.Parent
		case c.field == "kind":
			have = string(r.Kind)
		default:
			have, present = r.Labels[strings.TrimPrefix(c.field, "labels.")]
		}
		switch c.op {
		case "==":
			if !present || have != c.value {
				return false
			}
		case "!=":
			if present && have == c.value {
				return false
			}
		default:
			if !present || have == "" {
				return false
			}
		}
	}
	return true
}

// parseFilters parses List's filters: a snapshot is listed if any of them matches (none: all).
func parseFilters(ss []string) ([]filter, error) {
	var fs []filter
	for _, s := range ss {
		f, err := parseFilter(s)
		if err != nil {
			return nil, err
		}
		fs = append(fs, f)
	}
	return fs, nil
}

func matchAny(fs []filter, name string, r *record) bool {
	if len(fs) == 0 {
		return true
	}
	for _, f := range fs {
		if f.match(name, r) {
			return true
		}
	}
	return false
}
