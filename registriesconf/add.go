package registriesconf

import (
	"fmt"
	"sort"
)

// AddDefault adds r, checked as a [[registry]] entry of a file is, unless an entry of the
// same prefix is configured: registries.conf wins over configuration read from elsewhere
// (containerd's hosts.toml, package hoststoml). It says whether r was added.
func (c *Config) AddDefault(r Registry) (bool, error) {
	r, err := validRegistry(r)
	if err != nil {
		return false, fmt.Errorf("registry entry for %s: %w", r.Prefix, err)
	}
	for _, have := range c.Registries {
		if have.Prefix == r.Prefix {
			return false, nil
		}
	}
	c.Registries = append(c.Registries, r)
	sort.Slice(c.Registries, func(i, j int) bool { return c.Registries[i].Prefix < c.Registries[j].Prefix })
	return true, nil
}
