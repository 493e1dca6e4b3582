//go:build tools

// Package tools pins promtool's and the Prometheus server's main packages so `go mod tidy`
// keeps their dependencies. The server is built without the `builtinassets` tag: the e2e tier
// uses its HTTP API only, so the web UI's compiled assets (an npm build) are not needed.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
