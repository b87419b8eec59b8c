package intake

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go/micro"
)

func TestIdentity(t *testing.T) {
	stamped := `{"acc":"ALICE","user":"alice","rtt":1000}`
	for _, c := range []struct {
		name  string
		info  []string
		reply string
		want  string
	}{
		{"no header, own inbox", nil, "_INBOX.x", LocalIdentity},
		{"no header, through an import", nil, "_R_.abc.def", LocalIdentity},
		{"stamped by the server", []string{stamped}, "_R_.abc.def", "alice@ALICE"},
		{"stamped, no reply (publish through an import)", []string{stamped}, "", "alice@ALICE"},
		// A client in vigil's own account cannot make the server stamp:
		// its header with a reply of its own inbox is only a claim.
		{"set by the client, own inbox", []string{`{"acc":"BOB","user":"bob"}`}, "_INBOX.x", LocalIdentity},
		{"server's value comes last", []string{`{"acc":"BOB","user":"bob"}`, stamped}, "_R_.abc", "alice@ALICE"},
		{"account only (import without share)", []string{`{"acc":"ALICE"}`}, "_R_.abc", "ALICE"},
		{"not JSON", []string{`bob`}, "_R_.abc", LocalIdentity},
		{"no account", []string{`{"user":"bob"}`}, "_R_.abc", LocalIdentity},
		{"control characters dropped", []string{`{"acc":"A\n","user":"u\u0000"}`}, "_R_.abc", "u@A"},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := micro.Headers{}
			if c.info != nil {
				h[RequestInfoHeader] = c.info
			}
			if got := Identity(h, c.reply); got != c.want {
				t.Errorf("Identity = %q, want %q", got, c.want)
			}
		})
	}
	long := micro.Headers{RequestInfoHeader: {`{"acc":"A","user":"` + strings.Repeat("é", 200) + `"}`}}
	if got := Identity(long, "_R_.x"); len(got) > maxOperatorLen || !strings.HasPrefix(got, "é") || strings.ContainsRune(got, '\uFFFD') {
		t.Errorf("long identity = %q (%d bytes)", got, len(got))
	}
}

func TestDisplayName(t *testing.T) {
	if got := displayName(micro.Headers{OperatorHeader: {"ops\r\noncall"}}); got != "opsoncall" {
		t.Errorf("displayName = %q", got)
	}
}
