package coinbase

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TokenLifetime is how long a CDP JWT is valid: Coinbase accepts at most two minutes.
const TokenLifetime = 120 * time.Second

// Credentials is a CDP API key: its name and its ES256 (P-256) private key.
// It signs a fresh JWT for every REST request and WebSocket message. The
// private key never appears in String, GoString or slog output.
type Credentials struct {
	keyName string
	key     *ecdsa.PrivateKey
}

// cdpClaims are the claims Coinbase Advanced Trade expects.
type cdpClaims struct {
	jwt.RegisteredClaims
	// URI is "METHOD host/path" for REST requests and absent for WebSocket messages.
	URI string `json:"uri,omitempty"`
}

// NewCredentials builds Credentials from a key name
// ("organizations/{org}/apiKeys/{id}") and a PEM private key, either
// "EC PRIVATE KEY" (SEC 1, as CDP issues them) or PKCS #8. Literal "\n"
// sequences, as found when the PEM comes from a JSON file or an environment
// variable, are turned into newlines. The error wraps ErrInvalidKey.
func NewCredentials(keyName string, privateKeyPEM []byte) (*Credentials, error) {
	if strings.TrimSpace(keyName) == "" {
		return nil, fmt.Errorf("%w: key name is empty", ErrInvalidKey)
	}
	if !bytes.Contains(privateKeyPEM, []byte("\n")) {
		privateKeyPEM = bytes.ReplaceAll(privateKeyPEM, []byte(`\n`), []byte("\n"))
	}
	key, err := jwt.ParseECPrivateKeyFromPEM(privateKeyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: private key: %v", ErrInvalidKey, err)
	}
	if key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: private key curve is %s, ES256 needs P-256", ErrInvalidKey, key.Curve.Params().Name)
	}
	return &Credentials{keyName: keyName, key: key}, nil
}

// KeyName returns the CDP key name, which is also the JWT's sub and kid.
func (c *Credentials) KeyName() string { return c.keyName }

// String names the key and hides the secret. It and GoString and LogValue
// have value receivers so that a dereferenced copy is masked too.
func (c Credentials) String() string {
	return "coinbase.Credentials{key: " + c.keyName + ", secret: [REDACTED]}"
}

// GoString is String, so %#v does not print the private key either.
func (c Credentials) GoString() string { return c.String() }

// LogValue makes slog print the key name only.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("key", c.keyName), slog.String("secret", "[REDACTED]"))
}

// RESTToken signs a JWT for one REST request: uri is "METHOD host/path"
// (no scheme, no query), valid from now for TokenLifetime.
func (c *Credentials) RESTToken(method, host, path string) (string, error) {
	return c.sign(method+" "+host+path, time.Now())
}

// WebSocketToken signs a JWT for one WebSocket subscribe or unsubscribe
// message: the same claims as RESTToken without uri.
func (c *Credentials) WebSocketToken() (string, error) {
	return c.sign("", time.Now())
}

func (c *Credentials) sign(uri string, now time.Time) (string, error) {
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("%w: nonce: %v", ErrInvalidKey, err)
	}
	token := jwt.NewWithClaims(jwt.SigningMethodES256, cdpClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    "cdp",
			Subject:   c.keyName,
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(TokenLifetime)),
		},
		URI: uri,
	})
	token.Header["kid"] = c.keyName
	token.Header["nonce"] = hex.EncodeToString(nonce)
	signed, err := token.SignedString(c.key)
	if err != nil {
		return "", fmt.Errorf("%w: signing: %v", ErrInvalidKey, err)
	}
	return signed, nil
}
