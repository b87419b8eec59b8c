#!/usr/bin/env bash
# Installs what vigil's dev stack (make run) and tests (make test) need and
# this machine lacks, and nothing else:
#   - redis-server (Debian package redis-server)
#   - the PostgreSQL server binaries initdb and postgres (Debian package
#     postgresql), unless initdb is on PATH or in /usr/lib/postgresql/*/bin
#   - the nats CLI (go install), optional: a failure is only a warning
#   - staticcheck (go install), optional: a failure is only a warning
#   - Jaeger v2 (built once by jaeger.sh, several minutes)
#   - Prometheus and promtool (Debian package prometheus)
# NATS itself needs nothing: vigil embeds nats-server.
#
# Usage: deps.sh [--run]
#   (no flag)  everything: make deps, make test (the tracing test needs
#              Jaeger) and .ci/run
#   --run      only what make run needs: redis-server and PostgreSQL, the
#              nats CLI in the background (the stack does not wait for it),
#              Jaeger too when TRACING=1 (make run TRACING=1), Prometheus
#              too when OBSERVE=1 or TRACING=1 (make run OBSERVE=1)
#
# The Debian packages would start a system redis (port 6379) and create and
# start a PostgreSQL cluster (port 5432); vigil runs private instances
# instead, so while installing, a temporary /usr/sbin/policy-rc.d keeps the
# packages' services from starting. Safe to run again: it only installs
# what is missing.
set -euo pipefail

NATS_CLI_VERSION=v0.5.1

profile=all
case "${1:-}" in
"") ;;
--run) profile=run ;;
*)
	echo "deps: unknown argument ${1}: usage: deps.sh [--run]" >&2
	exit 2
	;;
esac
tracing=false
if [ "$profile" = all ] || [ "${TRACING:-}" = 1 ] || [ "${TRACING:-}" = true ]; then
	tracing=true
fi
# Prometheus: for the dashboards test (make test), make run OBSERVE=1, and
# make run TRACING=1, which implies OBSERVE=1.
observe=false
if $tracing || [ "${OBSERVE:-}" = 1 ] || [ "${OBSERVE:-}" = true ]; then
	observe=true
fi

log() { echo "deps: $*"; }
warn() { echo "deps: warning: $*" >&2; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo)
	fi
fi

apt_updated=false
policy_rc=/usr/sbin/policy-rc.d
created_policy=false

remove_policy() {
	if $created_policy; then
		"${SUDO[@]}" rm -f "$policy_rc"
	fi
}
trap remove_policy EXIT

# apt_install installs Debian packages without starting their services.
apt_install() {
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "deps: $* missing and there is no apt-get: install $* with this system's package manager" >&2
		exit 1
	fi
	if ! $apt_updated; then
		log "apt-get update"
		"${SUDO[@]}" apt-get update -q
		apt_updated=true
	fi
	if [ ! -e "$policy_rc" ]; then
		printf '#!/bin/sh\n# vigil deps.sh: do not start services while installing\nexit 101\n' |
			"${SUDO[@]}" tee "$policy_rc" >/dev/null
		"${SUDO[@]}" chmod 755 "$policy_rc"
		created_policy=true
	fi
	log "apt-get install -y $*"
	"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

have_postgres() {
	if command -v initdb >/dev/null 2>&1; then
		return 0
	fi
	local bin
	for bin in /usr/lib/postgresql/*/bin; do
		if [ -x "$bin/initdb" ] && [ -x "$bin/postgres" ]; then
			return 0
		fi
	done
	return 1
}

# go_tool installs a Go command unless it is on PATH or in GOPATH/bin.
go_tool() {
	local name=$1 module=$2
	local gobin
	gobin=$(go env GOBIN)
	gobin=${gobin:-$(go env GOPATH)/bin}
	if command -v "$name" >/dev/null 2>&1 || [ -x "$gobin/$name" ]; then
		return 0
	fi
	log "go install $module"
	if ! go install "$module"; then
		warn "could not install $name ($module); everything else works without it"
		return 0
	fi
	case ":$PATH:" in
	*":$gobin:"*) ;;
	*) warn "$name is in $gobin, which is not on PATH (the Makefile adds it)" ;;
	esac
}

# go_tool_background installs a Go command like go_tool, but in the
# background at low priority, so that make run's first start does not wait
# for it (the dev stack does not need it; its banner says when it is not
# there yet). Its output goes to a log in the cache directory.
go_tool_background() {
	local name=$1 module=$2
	local gobin
	gobin=$(go env GOBIN)
	gobin=${gobin:-$(go env GOPATH)/bin}
	if command -v "$name" >/dev/null 2>&1 || [ -x "$gobin/$name" ]; then
		return 0
	fi
	local logdir=${XDG_CACHE_HOME:-$HOME/.cache}/vigil
	mkdir -p "$logdir"
	log "installing the $name CLI in the background (a few minutes the first time; log $logdir/$name-install.log)"
	nohup nice -n 19 go install "$module" >"$logdir/$name-install.log" 2>&1 &
}

packages=()
if ! command -v redis-server >/dev/null 2>&1; then
	packages+=(redis-server)
fi
if ! have_postgres; then
	packages+=(postgresql)
fi
if $observe && { ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; }; then
	packages+=(prometheus)
fi
if [ ${#packages[@]} -gt 0 ]; then
	apt_install "${packages[@]}"
fi

if ! command -v go >/dev/null 2>&1; then
	echo "deps: go is not on PATH: install Go 1.26 first" >&2
	exit 1
fi
if [ "$profile" = run ]; then
	go_tool_background nats "github.com/nats-io/natscli/nats@$NATS_CLI_VERSION"
else
	go_tool nats "github.com/nats-io/natscli/nats@$NATS_CLI_VERSION"
fi
if [ "$profile" = all ]; then
	go_tool staticcheck "honnef.co/go/tools/cmd/staticcheck@latest"
fi

# Jaeger v2 for the tracing test and `make run TRACING=1` only: built once
# from the Go module proxy and cached (jaeger.sh says so when it builds).
if ! $tracing; then
	log "ok: redis-server and the PostgreSQL server are installed (Jaeger only with TRACING=1, Prometheus with OBSERVE=1)"
	exit 0
fi
if ! jaeger=$(bash "$(dirname "$0")/jaeger.sh"); then
	echo "deps: could not build Jaeger (deploy/scripts/jaeger.sh)" >&2
	exit 1
fi
log "ok: redis-server, the PostgreSQL server and Prometheus are installed, Jaeger at $jaeger"
