#!/usr/bin/env bash
# Builds Jaeger v2 all-in-one from the Go module proxy once and caches the
# binary; prints its path. Used by `make run TRACING=1` and the tracing test.
#   JAEGER_BIN   where the binary is cached (default ~/.cache/vigil/jaeger-v1.76.0)
set -euo pipefail
version=v1.76.0
bin=${JAEGER_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/vigil/jaeger-$version}
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cd "$src"
cat >go.mod <<MOD
module jaegerbuild

go 1.26

// Jaeger's module graph needs this pin to resolve (see issue 8).
replace github.com/Shopify/sarama => github.com/Shopify/sarama v1.33.0
MOD
cat >tools.go <<'GO'
//go:build tools

package jaegerbuild

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
GO
echo "deps: building Jaeger $version once into $bin (for TRACING=1 and the tracing test; about 5-10 minutes on 2 cores, cached afterwards)" >&2
GOFLAGS=-mod=mod go get "github.com/jaegertracing/jaeger@$version" >&2
go mod tidy >&2
mkdir -p "$(dirname "$bin")"
go build -o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
mv "$bin.tmp" "$bin"
echo "$bin"
