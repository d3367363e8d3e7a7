// Package pull brings images from registries and OCI layouts into the store. zstd:chunked layers are
// pulled partially: only the files and chunks the store lacks are fetched, with HTTP Range requests.
package pull
