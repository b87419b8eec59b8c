// Package tlsfiles builds the client side of vigil's TLS connections (NATS,
// Redis) from PEM files named by environment variables: a CA bundle that
// verifies the server, and an optional client certificate and key.
//
// The files are checked once at start (Validate: a missing or unreadable
// file fails with a line naming its variable) and read again on every TLS
// handshake (Config), so a certificate, key or CA bundle replaced on disk
// is used by the next connection or reconnect without a restart.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
)

// Files names the PEM files of a client TLS configuration and the
// environment variables they come from (for errors).
type Files struct {
	// CA is a PEM bundle of the CA certificates that sign the server's
	// certificate; empty: the system's roots.
	CA, CAVar string
	// Cert and Key are the client certificate (chain) and its private key;
	// both or neither.
	Cert, CertVar string
	Key, KeyVar   string
}

// Any reports whether any file is named.
func (f Files) Any() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }

// Validate reads every named file once: the CA bundle must hold at least
// one certificate, the certificate and key must both be set and form a
// pair. The error names the variable.
func (f Files) Validate() error {
	if f.CA != "" {
		if _, err := f.RootCAs(); err != nil {
			return err
		}
	}
	switch {
	case f.Cert == "" && f.Key == "":
		return nil
	case f.Cert == "":
		return fmt.Errorf("%s: set, but %s is not: a client certificate needs both", f.KeyVar, f.CertVar)
	case f.Key == "":
		return fmt.Errorf("%s: set, but %s is not: a client certificate needs both", f.CertVar, f.KeyVar)
	}
	_, err := f.Certificate()
	return err
}

// RootCAs reads the CA bundle (nil, the system's roots, when CA is empty).
func (f Files) RootCAs() (*x509.CertPool, error) {
	if f.CA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.CAVar, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: %s holds no PEM certificate", f.CAVar, f.CA)
	}
	return pool, nil
}

// Certificate reads the client certificate and key.
func (f Files) Certificate() (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("%s/%s: %s, %s: %w", f.CertVar, f.KeyVar, f.Cert, f.Key, err)
	}
	return cert, nil
}

// Config is a client TLS configuration for a server named serverName (a
// host name or an IP address, which the server's certificate must name)
// that reads the files on every handshake: the client certificate through
// GetClientCertificate (sent only when the server asks for one), the
// server's certificate verified against the CA bundle read at that
// moment. Without a CA file the system's roots verify the server the
// usual way.
func (f Files) Config(serverName string) *tls.Config {
	cfg := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if f.Cert != "" {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := f.Certificate()
			if err != nil {
				return nil, err
			}
			return &cert, nil
		}
	}
	if f.CA != "" {
		// The standard verification with roots read now instead of once:
		// the stdlib's own check is skipped and done here in full
		// (chain to the roots, and the server's name), as in crypto/tls's
		// Config.VerifyConnection example.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = func(cs tls.ConnectionState) error { return f.verify(cs, serverName) }
	}
	return cfg
}

// verify checks the server's certificate chain against the CA bundle as it
// is on disk now, and serverName (the SNI name sent when empty; an IP
// address is never sent as SNI).
func (f Files) verify(cs tls.ConnectionState, serverName string) error {
	roots, err := f.RootCAs()
	if err != nil {
		return err
	}
	if serverName == "" {
		serverName = cs.ServerName
	}
	if serverName == "" {
		return errors.New("tls: no server name to verify the server's certificate against")
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the server sent no certificate")
	}
	opts := x509.VerifyOptions{
		DNSName:       serverName,
		Roots:         roots,
		Intermediates: x509.NewCertPool(),
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("tls: server certificate not trusted by %s (%s): %w", f.CAVar, f.CA, err)
	}
	return nil
}
