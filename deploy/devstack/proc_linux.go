package main

import "syscall"

// childAttr puts a service in its own process group, so a terminal's Ctrl-C
// reaches only the dev stack, which stops the services in order, and sends
// it SIGTERM should the dev stack die without stopping it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
