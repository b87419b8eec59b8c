package main

import (
	"fmt"
	"os"
	"path/filepath"

	"vigil.dev/pkg/localstack"
)

// devTLS loads the dev stack's certificates from dir (<run dir>/tls), or
// generates them there on the first TLS=1 run (a CA, a server
// certificate for 127.0.0.1 and localhost, a client certificate; pure
// Go, no openssl) and keeps them, so that the nats contexts and any
// client that trusts the CA stay valid from one run to the next. Delete
// the directory (or make clean) for new ones.
func devTLS(dir string) (*localstack.DevTLS, error) {
	d := &localstack.DevTLS{
		Dir: dir,
		CA:  filepath.Join(dir, "ca.pem"),
		Server: localstack.TLSFiles{
			CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server-key.pem"),
			CAFile: filepath.Join(dir, "ca.pem"),
		},
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
	}
	complete := true
	for _, f := range []string{d.CA, filepath.Join(dir, "ca-key.pem"), d.Server.CertFile, d.Server.KeyFile, d.ClientCert, d.ClientKey} {
		if _, err := os.Stat(f); err != nil {
			complete = false
		}
	}
	if complete {
		return d, nil
	}
	d, err := localstack.GenerateTLS(dir)
	if err != nil {
		return nil, fmt.Errorf("devstack: tls: %w", err)
	}
	return d, nil
}

// tlsEnv is the services' environment for the dev stack's TLS: the CA
// that verifies NATS and Redis (DATABASE_URL names it as sslrootcert
// itself) and the client certificate, which the servers verify.
func tlsEnv(certs *localstack.DevTLS) []string {
	return []string{
		"NATS_CA=" + certs.CA, "NATS_CERT=" + certs.ClientCert, "NATS_KEY=" + certs.ClientKey,
		"REDIS_CA=" + certs.CA, "REDIS_CERT=" + certs.ClientCert, "REDIS_KEY=" + certs.ClientKey,
	}
}
