//go:build unix && !linux

package localstack

import "syscall"

// childAttr puts a child in its own process group and runs it as cred when
// cred is not nil. Only Linux has a parent-death signal, so deathSignal is
// unused here: call Stop.
func childAttr(_ syscall.Signal, cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}
