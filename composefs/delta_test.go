package composefs

import "testing"

// TestDeltaRefusesHexRootBase: a base whose root has an entry named like an object directory
// would catch the redirects of the image above it: no delta is taken from it.
func TestDeltaRefusesHexRootBase(t *testing.T) {
	for name, refused := range map[string]bool{"ab": true, "0f": true, "AB": false, "abc": false, "g0": false} {
		base, layer := NewDir(0o755), NewDir(0o755)
		if err := base.AddChild(name, NewDir(0o755)); err != nil {
			t.Fatal(err)
		}
		if root, _ := DeltaTree(layer, base); (root == nil) != refused {
			t.Errorf("base with /%s: delta %v; want refused %v", name, root != nil, refused)
		}
	}
}
