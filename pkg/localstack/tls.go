package localstack

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TLSFiles are the PEM files of a server's TLS: its certificate and key,
// and the CA that verifies clients' certificates (optional: clients may
// connect without one).
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
}

// DevTLS is what GenerateTLS writes: a CA, a server certificate for the
// loopback address and localhost, and a client certificate, all signed by
// the CA.
type DevTLS struct {
	Dir string
	// CA is the CA certificate (ca.pem); its key is ca-key.pem.
	CA string
	// Server is what the servers run with.
	Server TLSFiles
	// ClientCert and ClientKey are a client certificate (client.pem,
	// client-key.pem).
	ClientCert, ClientKey string
}

// certValidity is how long generated certificates are valid.
const certValidity = 365 * 24 * time.Hour

// GenerateTLS writes a new CA and, signed by it, a server certificate
// (for 127.0.0.1, ::1, localhost and hosts) and a client certificate into
// dir (created if missing; keys mode 0600), replacing what was there.
// Pure Go (crypto/x509): no openssl needed.
func GenerateTLS(dir string, hosts ...string) (*DevTLS, error) {
	if err := ensureDir(dir, 0o755); err != nil {
		return nil, err
	}
	d := &DevTLS{
		Dir: dir,
		CA:  filepath.Join(dir, "ca.pem"),
		Server: TLSFiles{
			CertFile: filepath.Join(dir, "server.pem"), KeyFile: filepath.Join(dir, "server-key.pem"),
			CAFile: filepath.Join(dir, "ca.pem"),
		},
		ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem"),
	}
	caKey, caCert, err := newCA()
	if err != nil {
		return nil, err
	}
	if err := writeCert(d.CA, filepath.Join(dir, "ca-key.pem"), caCert, caKey); err != nil {
		return nil, err
	}
	if err := d.RenewServer(hosts...); err != nil {
		return nil, err
	}
	if err := issue(caCert, caKey, d.ClientCert, d.ClientKey, "vigil client", x509.ExtKeyUsageClientAuth, nil); err != nil {
		return nil, err
	}
	return d, nil
}

// RenewServer issues a new server certificate and key from the CA (for
// 127.0.0.1, ::1, localhost and hosts), replacing the files: what a
// certificate rotation does.
func (d *DevTLS) RenewServer(hosts ...string) error {
	caCert, caKey, err := d.loadCA()
	if err != nil {
		return err
	}
	names := append([]string{"127.0.0.1", "::1", "localhost"}, hosts...)
	return issue(caCert, caKey, d.Server.CertFile, d.Server.KeyFile, "vigil server", x509.ExtKeyUsageServerAuth, names)
}

// SerialOf is the serial number of the first certificate in a PEM file.
func SerialOf(path string) (*big.Int, error) {
	cert, err := readCert(path)
	if err != nil {
		return nil, err
	}
	return cert.SerialNumber, nil
}

func (d *DevTLS) loadCA() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cert, err := readCert(d.CA)
	if err != nil {
		return nil, nil, err
	}
	b, err := os.ReadFile(filepath.Join(d.Dir, "ca-key.pem"))
	if err != nil {
		return nil, nil, fmt.Errorf("localstack: tls: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, nil, fmt.Errorf("localstack: tls: %s: no PEM key", filepath.Join(d.Dir, "ca-key.pem"))
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("localstack: tls: CA key: %w", err)
	}
	return cert, key, nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("localstack: tls: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("localstack: tls: %s: no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("localstack: tls: %s: %w", path, err)
	}
	return cert, nil
}

func newCA() (*ecdsa.PrivateKey, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("localstack: tls: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "vigil dev CA", Organization: []string{"vigil"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("localstack: tls: CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("localstack: tls: CA: %w", err)
	}
	return key, cert, nil
}

// issue writes a certificate for names (IP addresses or DNS names) with
// usage, signed by the CA, and its key.
func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, certPath, keyPath, cn string, usage x509.ExtKeyUsage, names []string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("localstack: tls: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"vigil"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("localstack: tls: %s: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("localstack: tls: %s: %w", cn, err)
	}
	return writeCert(certPath, keyPath, cert, key)
}

// writeCert writes a certificate (0644) and its key (0600), each through
// a temporary file and a rename, so that a reader never sees half a file.
func writeCert(certPath, keyPath string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("localstack: tls: %w", err)
	}
	if err := writeAtomic(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	return writeAtomic(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644)
}

func writeAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("localstack: tls: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("localstack: tls: %w", err)
	}
	return nil
}

func randomSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n.Add(n, big.NewInt(1))
}
