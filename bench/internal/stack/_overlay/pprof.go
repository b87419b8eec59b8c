// This file is added to a service's package main by the benchmark runner
// (go build -overlay) when it profiles: it serves net/http/pprof on the
// loopback address named by VIGIL_BENCH_PPROF and writes the address it
// bound to the file named by VIGIL_BENCH_PPROF_ADDR_FILE. Without
// VIGIL_BENCH_PPROF it does nothing. The service's own code is unchanged.

package main

import (
	"log"
	"net"
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
)

func init() {
	addr := os.Getenv("VIGIL_BENCH_PPROF")
	if addr == "" {
		return
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Printf("bench pprof: listen %s: %v", addr, err)
		return
	}
	if file := os.Getenv("VIGIL_BENCH_PPROF_ADDR_FILE"); file != "" {
		if err := os.WriteFile(file, []byte(ln.Addr().String()), 0o644); err != nil {
			log.Printf("bench pprof: %v", err)
		}
	}
	go func() { _ = http.Serve(ln, nil) }()
}
