package natsx

import (
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

func TestAPIPrefixFollowsTheJetStreamOptions(t *testing.T) {
	for _, c := range []struct {
		opts jetstream.JetStreamOptions
		want string
	}{
		{jetstream.JetStreamOptions{}, "$JS.API."},
		{jetstream.JetStreamOptions{APIPrefix: "$JS.API"}, "$JS.API."},
		{jetstream.JetStreamOptions{APIPrefix: "tenant.js.api."}, "tenant.js.api."},
		{jetstream.JetStreamOptions{Domain: "hub"}, "$JS.hub.API."},
	} {
		if got := apiPrefix(c.opts); got != c.want {
			t.Errorf("apiPrefix(%+v) = %q, want %q", c.opts, got, c.want)
		}
	}
}
