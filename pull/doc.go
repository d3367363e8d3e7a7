// Package pull brings images from registries and OCI layouts into the store. zstd:chunked layers are
// pulled partially: pull locates and fetches their metadata and decides what to fetch from where
// (and when to fall back to a full pull); the store's partial import (layer.ImportPartial) plans,
// assembles, verifies and records, fetching only the files and chunks the store lacks through
// HTTP Range requests.
package pull
