package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"vigil.dev/pkg/tlsfiles"
)

// NATS is the NATS part shared by every binary.
type NATS struct {
	URL   string `env:"NATS_URL" envDefault:"nats://127.0.0.1:4222" help:"NATS server URLs, comma separated"`
	Creds string `env:"NATS_CREDS" help:"path of a NATS credentials file (read again on every reconnect)"`
	// PasswordFile holds the password of NATS_URL's user, read on every
	// (re)connect, so that a rotated password needs no restart.
	PasswordFile string `env:"NATS_PASSWORD_FILE" help:"file holding the password of the user in NATS_URL (which then carries none), read on every (re)connect"`
	// CA, Cert and Key are the TLS files (as the nats CLI's --tlsca,
	// --tlscert, --tlskey and their NATS_CA, NATS_CERT, NATS_KEY).
	CA   string `env:"NATS_CA" help:"PEM CA bundle that verifies the NATS servers' certificates (TLS: tls:// in NATS_URL, or the server requires it); read on every handshake"`
	Cert string `env:"NATS_CERT" help:"PEM client certificate for NATS (with NATS_KEY); read on every handshake"`
	Key  string `env:"NATS_KEY" help:"PEM private key of NATS_CERT"`
	// StreamReplicas is how many servers of a JetStream cluster hold each
	// vigil stream and KV bucket (0 counts as 1).
	StreamReplicas int `env:"VIGIL_STREAM_REPLICAS" envDefault:"1" help:"replicas of vigil's JetStream streams and KV buckets: 1, or 3 (up to 5) in a cluster of that many servers"`
	// Partitions is how many partitions VIGIL_CANDLES and VIGIL_INDICATORS
	// are split into; the same on every binary of a deployment. From the
	// environment it must be 1 to MaxPartitions (VIGIL_PARTITIONS=0 is
	// refused at start); the zero value of a NATS built in code counts as
	// DefaultPartitions.
	Partitions int `env:"VIGIL_PARTITIONS" envDefault:"64" help:"partitions of VIGIL_CANDLES and VIGIL_INDICATORS (1-1024, the same everywhere, more than the instances of a service)"`
}

// Validate checks the URLs, that the credentials file exists, the number
// of replicas and the partition count.
func (n NATS) Validate() error {
	for _, u := range splitComma(n.URL) {
		if err := CheckURL("NATS_URL", u, "nats", "tls", "ws", "wss"); err != nil {
			return err
		}
	}
	if n.Creds != "" {
		if _, err := os.Stat(n.Creds); err != nil {
			return fmt.Errorf("NATS_CREDS: %v", err)
		}
	}
	if err := n.validatePasswordFile(); err != nil {
		return err
	}
	if err := n.TLSFiles().Validate(); err != nil {
		return err
	}
	if n.StreamReplicas < 0 || n.StreamReplicas > 5 {
		return fmt.Errorf("VIGIL_STREAM_REPLICAS: %d is not between 1 and 5", n.StreamReplicas)
	}
	if n.Partitions < 1 || n.Partitions > MaxPartitions {
		return fmt.Errorf("VIGIL_PARTITIONS: %d is not between 1 and %d", n.Partitions, MaxPartitions)
	}
	return nil
}

// TLSFiles are the NATS client's TLS files.
func (n NATS) TLSFiles() tlsfiles.Files {
	return tlsfiles.Files{CA: n.CA, CAVar: "NATS_CA", Cert: n.Cert, CertVar: "NATS_CERT", Key: n.Key, KeyVar: "NATS_KEY"}
}

// validatePasswordFile checks that NATS_PASSWORD_FILE is readable and
// that NATS_URL names a user but no password beside it.
func (n NATS) validatePasswordFile() error {
	if n.PasswordFile == "" {
		return nil
	}
	if _, err := ReadSecretFile("NATS_PASSWORD_FILE", n.PasswordFile); err != nil {
		return err
	}
	for _, raw := range splitComma(n.URL) {
		u, _ := url.Parse(raw)
		if u.User == nil || u.User.Username() == "" {
			return fmt.Errorf("NATS_PASSWORD_FILE: set, but %s names no user (nats://USER@host:4222)", MaskURL(raw))
		}
		if _, ok := u.User.Password(); ok {
			return fmt.Errorf("NATS_PASSWORD_FILE: set, but %s has a password too: keep only the user", MaskURL(raw))
		}
	}
	return nil
}

// ReadSecretFile reads a secret from a file (a password file): its
// content without the trailing newline. It must not be empty; the error
// names the variable.
func ReadSecretFile(name, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %v", name, err)
	}
	secret := strings.TrimRight(string(b), "\r\n")
	if secret == "" {
		return "", fmt.Errorf("%s: %s is empty", name, path)
	}
	return secret, nil
}

// Partition counts of NATS.Partitions.
const (
	DefaultPartitions = 64
	MaxPartitions     = 1024
)

// PartitionCount is Partitions, or DefaultPartitions for the zero value
// of a NATS built in code (Validate refuses 0 from the environment).
func (n NATS) PartitionCount() int {
	if n.Partitions == 0 {
		return DefaultPartitions
	}
	return n.Partitions
}

// Redis is the Redis part of a binary that uses Redis.
type Redis struct {
	URL string `env:"REDIS_URL,required" help:"Redis URL, e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS); with Sentinel: redis://sentinel1:26379/0?master_name=NAME&addr=sentinel2:26379&addr=sentinel3:26379[&password=MASTER_PASSWORD]"`
	// CA, Cert and Key are the TLS files of a rediss:// URL.
	CA   string `env:"REDIS_CA" help:"PEM CA bundle that verifies the Redis servers' (and sentinels') certificates, with rediss://; read on every handshake"`
	Cert string `env:"REDIS_CERT" help:"PEM client certificate for Redis (with REDIS_KEY); read on every handshake"`
	Key  string `env:"REDIS_KEY" help:"PEM private key of REDIS_CERT"`
}

// TLSFiles are the Redis client's TLS files.
func (r Redis) TLSFiles() tlsfiles.Files {
	return tlsfiles.Files{CA: r.CA, CAVar: "REDIS_CA", Cert: r.Cert, CertVar: "REDIS_CERT", Key: r.Key, KeyVar: "REDIS_KEY"}
}

// Validate checks the URL (a server URL, or a sentinel URL, IsSentinelURL,
// over redis or rediss) and the TLS files, which need rediss.
func (r Redis) Validate() error {
	if err := r.validateURL(); err != nil {
		return err
	}
	files := r.TLSFiles()
	if files.Any() && !strings.HasPrefix(r.URL, "rediss://") {
		return fmt.Errorf("REDIS_URL: %s is not rediss:// but REDIS_CA, REDIS_CERT or REDIS_KEY is set", MaskURL(r.URL))
	}
	return files.Validate()
}

func (r Redis) validateURL() error {
	if IsSentinelURL(r.URL) {
		if err := CheckURL("REDIS_URL", r.URL, "redis", "rediss"); err != nil {
			return err
		}
		u, _ := url.Parse(r.URL)
		if u.Query().Get("master_name") == "" {
			return fmt.Errorf("REDIS_URL: master_name is empty: it names the master the sentinels monitor")
		}
		return nil
	}
	return CheckURL("REDIS_URL", r.URL, "redis", "rediss", "unix")
}

// IsSentinelURL reports whether a Redis URL names Redis Sentinels (it has
// a master_name query parameter, go-redis's failover URL form) rather
// than a server.
func IsSentinelURL(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && u.Query().Has("master_name")
}

// Postgres is the PostgreSQL part of a binary that uses Postgres.
type Postgres struct {
	URL string `env:"DATABASE_URL,required" help:"PostgreSQL URL, e.g. postgres://vigil@127.0.0.1:5432/vigil; TLS: ?sslmode=verify-full&sslrootcert=CA.pem[&sslcert=C.pem&sslkey=K.pem] (files read again for every new connection)"`
	// PasswordFile holds the database password, read for every new
	// connection, so that a rotated password needs no restart.
	PasswordFile string `env:"DATABASE_PASSWORD_FILE" help:"file holding the password of DATABASE_URL's user (which then carries none), read for every new connection"`
}

// Validate checks the URL, that its TLS files load (pgx reads sslrootcert,
// sslcert and sslkey) and the password file.
func (p Postgres) Validate() error {
	if err := CheckURL("DATABASE_URL", p.URL, "postgres", "postgresql"); err != nil {
		return err
	}
	if _, err := pgconn.ParseConfig(p.URL); err != nil {
		return fmt.Errorf("DATABASE_URL: %v", err)
	}
	if p.PasswordFile != "" {
		if _, err := ReadSecretFile("DATABASE_PASSWORD_FILE", p.PasswordFile); err != nil {
			return err
		}
	}
	return nil
}

// Service is what every service binary shares besides its connections.
type Service struct {
	Instance        string        `env:"VIGIL_INSTANCE" help:"instance name in logs and status (default host-pid)"`
	LogLevel        string        `env:"VIGIL_LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	ShutdownTimeout time.Duration `env:"VIGIL_SHUTDOWN_TIMEOUT" envDefault:"10s" help:"how long shutdown may drain"`
	HealthAddr      string        `env:"VIGIL_HEALTH_ADDR" help:"host:port of the HTTP health endpoint (/livez, /readyz, /metrics for Prometheus); empty: none"`
}

// Validate checks the log level and the timeout.
func (s Service) Validate() error {
	switch s.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("VIGIL_LOG_LEVEL: %q is not one of debug, info, warn, error", s.LogLevel)
	}
	if s.ShutdownTimeout <= 0 {
		return errors.New("VIGIL_SHUTDOWN_TIMEOUT: must be positive")
	}
	if s.HealthAddr != "" {
		if _, port, err := net.SplitHostPort(s.HealthAddr); err != nil || port == "" {
			return fmt.Errorf("VIGIL_HEALTH_ADDR: %q is not host:port", s.HealthAddr)
		}
	}
	return nil
}

// InstanceName is the configured instance name, or host-pid.
func (s Service) InstanceName() string {
	if s.Instance != "" {
		return s.Instance
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}

// ValidateAll runs every validator and returns the first error.
func ValidateAll(vs ...Validator) error {
	for _, v := range vs {
		if err := v.Validate(); err != nil {
			return err
		}
	}
	return nil
}

func splitComma(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
