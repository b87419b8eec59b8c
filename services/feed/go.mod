module vigil.dev/services/feed

go 1.26.0

require (
	github.com/coder/websocket v1.8.15
	github.com/golang-jwt/jwt/v5 v5.3.1
	golang.org/x/time v0.16.0
)

replace vigil.dev/pkg => ../../pkg
