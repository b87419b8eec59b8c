package localstack

import "syscall"

// childAttr puts a child in its own process group, sends it deathSignal
// when the parent dies and runs it as cred when cred is not nil.
func childAttr(deathSignal syscall.Signal, cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: deathSignal, Credential: cred}
}
