package coinbase_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"vigil.dev/services/feed/internal/coinbase"
)

func TestNewCredentialsParsesKeys(t *testing.T) {
	key, sec1 := newKeyPEM(t)
	pkcs8DER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8DER})
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384DER, err := x509.MarshalECPrivateKey(p384)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		keyName string
		pem     []byte
		want    error
	}{
		{"SEC 1 EC PRIVATE KEY", "organizations/o/apiKeys/k", sec1, nil},
		{"PKCS 8", "organizations/o/apiKeys/k", pkcs8, nil},
		{"escaped newlines from JSON", "organizations/o/apiKeys/k", bytes.ReplaceAll(sec1, []byte("\n"), []byte(`\n`)), nil},
		{"P-384 is not ES256", "organizations/o/apiKeys/k", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: p384DER}), coinbase.ErrInvalidKey},
		{"not PEM", "organizations/o/apiKeys/k", []byte("secret"), coinbase.ErrInvalidKey},
		{"empty key name", " ", sec1, coinbase.ErrInvalidKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds, err := coinbase.NewCredentials(tt.keyName, tt.pem)
			if !errors.Is(err, tt.want) {
				t.Fatalf("NewCredentials error = %v, want %v", err, tt.want)
			}
			if err == nil && creds.KeyName() != tt.keyName {
				t.Fatalf("KeyName() = %q, want %q", creds.KeyName(), tt.keyName)
			}
		})
	}
}

func TestCredentialsTokens(t *testing.T) {
	const keyName = "organizations/org-1/apiKeys/key-1"
	creds, key := newCredentials(t, keyName)
	rest, err := creds.RESTToken("GET", "api.coinbase.com", "/api/v3/brokerage/products/BTC-USD/candles")
	if err != nil {
		t.Fatal(err)
	}
	ws, err := creds.WebSocketToken()
	if err != nil {
		t.Fatal(err)
	}
	rest2, err := creds.RESTToken("GET", "api.coinbase.com", "/api/v3/brokerage/products/BTC-USD/candles")
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		token   string
		wantURI any // nil when the claim must be absent
	}{
		{"REST", rest, "GET api.coinbase.com/api/v3/brokerage/products/BTC-USD/candles"},
		{"WebSocket", ws, nil},
	}
	nonces := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claims := jwt.MapClaims{}
			parsed, err := jwt.ParseWithClaims(tt.token, claims, func(*jwt.Token) (any, error) { return &key.PublicKey, nil },
				jwt.WithValidMethods([]string{"ES256"}))
			if err != nil {
				t.Fatalf("token does not verify with the public key: %v", err)
			}
			if kid := parsed.Header["kid"]; kid != keyName {
				t.Errorf("header kid = %v, want %s", kid, keyName)
			}
			nonce, _ := parsed.Header["nonce"].(string)
			if _, err := hex.DecodeString(nonce); err != nil || len(nonce) != 32 || nonces[nonce] {
				t.Errorf("header nonce = %q, want 32 fresh hex digits", nonce)
			}
			nonces[nonce] = true
			if claims["iss"] != "cdp" || claims["sub"] != keyName {
				t.Errorf("iss = %v, sub = %v; want cdp and the key name", claims["iss"], claims["sub"])
			}
			nbf, _ := claims["nbf"].(float64)
			exp, _ := claims["exp"].(float64)
			if now := float64(time.Now().Unix()); nbf < now-5 || nbf > now+1 || exp-nbf != 120 {
				t.Errorf("nbf = %v, exp = %v; want nbf now and exp 120 s later", nbf, exp)
			}
			if got := claims["uri"]; got != tt.wantURI {
				t.Errorf("uri = %v, want %v", got, tt.wantURI)
			}
			for _, absent := range []string{"aud", "iat"} {
				if _, ok := claims[absent]; ok {
					t.Errorf("claim %s is present; Advanced Trade tokens do not carry it", absent)
				}
			}
		})
	}
	if rest == rest2 {
		t.Error("two REST tokens are identical; each request needs a fresh one")
	}
}

func TestCredentialsNeverPrintTheSecret(t *testing.T) {
	creds, key := newCredentials(t, "organizations/o/apiKeys/k")
	raw, err := key.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	secret := fmt.Sprintf("%x", raw)
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "credentials", creds)
	outputs := map[string]string{
		"%v":   fmt.Sprintf("%v", creds),
		"%+v":  fmt.Sprintf("%+v", creds),
		"%#v":  fmt.Sprintf("%#v", creds),
		"slog": logged.String(),
	}
	for format, out := range outputs {
		if strings.Contains(out, secret) || strings.Contains(out, fmt.Sprintf("%X", raw)) || !strings.Contains(out, "organizations/o/apiKeys/k") {
			t.Errorf("%s output %q leaks the secret or lacks the key name", format, out)
		}
	}
}

func TestGranularityForTimeframe(t *testing.T) {
	tests := []struct {
		timeframe string
		want      coinbase.Granularity
		duration  time.Duration
	}{
		{"1m", coinbase.OneMinute, time.Minute},
		{"5m", coinbase.FiveMinute, 5 * time.Minute},
		{"15m", coinbase.FifteenMinute, 15 * time.Minute},
		{"1h", coinbase.OneHour, time.Hour},
		{"4h", coinbase.FourHour, 4 * time.Hour},
		{"1d", coinbase.OneDay, 24 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.timeframe, func(t *testing.T) {
			g, err := coinbase.GranularityForTimeframe(tt.timeframe)
			if err != nil || g != tt.want || g.Duration() != tt.duration || g.Timeframe() != tt.timeframe {
				t.Fatalf("GranularityForTimeframe(%q) = %q, %v (duration %v, timeframe %q)", tt.timeframe, g, err, g.Duration(), g.Timeframe())
			}
		})
	}
	for _, bad := range []string{"", "30m", "1M", "ONE_MINUTE"} {
		if _, err := coinbase.GranularityForTimeframe(bad); !errors.Is(err, coinbase.ErrInvalidGranularity) {
			t.Errorf("GranularityForTimeframe(%q) error = %v, want ErrInvalidGranularity", bad, err)
		}
	}
}
