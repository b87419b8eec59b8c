package fakecoinbase

import (
	"errors"
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// tokenLifetime is the longest nbf-to-exp span Coinbase accepts.
const tokenLifetime = 120 * time.Second

// errAuth is the root of every JWT rejection.
var errAuth = errors.New("authentication failure")

type cdpClaims struct {
	jwt.RegisteredClaims
	URI *string `json:"uri"`
}

// verifyJWT checks a CDP JWT: ES256 signed by the configured key, header kid
// equal to the key name and a nonce, iss "cdp", sub the key name, nbf and
// exp present and at most two minutes apart, now inside [nbf, exp], and uri
// equal to wantURI (absent when wantURI is "", as on WebSocket messages).
func (s *Server) verifyJWT(token, wantURI string) error {
	var claims cdpClaims
	parsed, err := jwt.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		if kid, _ := t.Header["kid"].(string); kid != s.cfg.authKeyName {
			return nil, fmt.Errorf("header kid %q is not the key name", kid)
		}
		if nonce, _ := t.Header["nonce"].(string); nonce == "" {
			return nil, errors.New("header nonce is missing")
		}
		return s.cfg.authKey, nil
	},
		jwt.WithValidMethods([]string{jwt.SigningMethodES256.Alg()}),
		jwt.WithIssuer("cdp"),
		jwt.WithSubject(s.cfg.authKeyName),
		jwt.WithExpirationRequired(),
	)
	if err != nil {
		return fmt.Errorf("%w: %v", errAuth, err)
	}
	if !parsed.Valid {
		return fmt.Errorf("%w: token is not valid", errAuth)
	}
	if claims.NotBefore == nil {
		return fmt.Errorf("%w: claim nbf is missing", errAuth)
	}
	if span := claims.ExpiresAt.Sub(claims.NotBefore.Time); span > tokenLifetime {
		return fmt.Errorf("%w: exp is %v after nbf, more than %v", errAuth, span, tokenLifetime)
	}
	switch {
	case wantURI == "" && claims.URI != nil:
		return fmt.Errorf("%w: claim uri %q is not allowed on WebSocket messages", errAuth, *claims.URI)
	case wantURI != "" && claims.URI == nil:
		return fmt.Errorf("%w: claim uri is missing, want %q", errAuth, wantURI)
	case wantURI != "" && *claims.URI != wantURI:
		return fmt.Errorf("%w: claim uri %q, want %q", errAuth, *claims.URI, wantURI)
	}
	return nil
}

// recordAuthFailure keeps err for AuthFailures.
func (s *Server) recordAuthFailure(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authFailures = append(s.authFailures, err.Error())
}
