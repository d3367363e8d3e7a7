package interop

import "archive/tar"

type tarHeader = tar.Header
