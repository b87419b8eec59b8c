package intake

import (
	"encoding/json"
	"strings"
	"unicode"

	"github.com/nats-io/nats.go/micro"
)

// LocalIdentity is the operator recorded for a request that did not cross
// a service import, so that the server named nobody: it was sent by a user
// of vigil's own NATS account (the admin of deploy/nats) or, with NATS
// running without auth, by anyone.
const LocalIdentity = "local"

// ImportReplyPrefix starts the reply subject nats-server gives a request
// that crossed accounts through a service import (the response mapping).
const ImportReplyPrefix = "_R_."

// Identity is the operator the NATS server authenticated for a request
// with headers h and reply subject reply: "<user>@<account>" from the
// Nats-Request-Info header that nats-server stamps on a request crossing a
// service import (deploy/nats: every tenant's account imports
// vigil.cmd.<tenant>.> with share), replacing whatever header the client
// set. A request that did not cross an import (its reply is the client's
// own inbox) was not stamped, so a Nats-Request-Info it carries is the
// client's claim and is ignored: LocalIdentity.
func Identity(h micro.Headers, reply string) string {
	values := h.Values(RequestInfoHeader)
	if len(values) == 0 || (reply != "" && !strings.HasPrefix(reply, ImportReplyPrefix)) {
		return LocalIdentity
	}
	// The server removes the client's copies and appends its own: the last
	// value is the server's.
	var ci struct {
		Account string `json:"acc"`
		User    string `json:"user"`
	}
	if err := json.Unmarshal([]byte(values[len(values)-1]), &ci); err != nil || ci.Account == "" {
		return LocalIdentity
	}
	id := ci.Account
	if ci.User != "" {
		id = ci.User + "@" + ci.Account
	}
	return printable(id)
}

// displayName is the Vigil-Operator header: a name the client chose,
// recorded for display next to the authenticated identity.
func displayName(h micro.Headers) string { return printable(h.Get(OperatorHeader)) }

// printable keeps the printable characters of s, at most maxOperatorLen
// bytes of valid UTF-8.
func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
	if len(s) > maxOperatorLen {
		s = s[:maxOperatorLen]
	}
	return strings.ToValidUTF8(s, "")
}
