package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// alertsStream connects to a NATS server of the test's own with the
// contract's streams and publishes n alerts alternating between the users,
// rule-0, rule-1, ... for each.
func alertsStream(t *testing.T, users []string, n int) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(testenv.StartNATS(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := natsx.EnsureStreams(ctx, js); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		publishTestAlert(t, js, users[i%len(users)], fmt.Sprintf("rule-%d", i/len(users)))
	}
	return nc
}

func publishTestAlert(t *testing.T, js jetstream.JetStream, user, rule string) {
	t.Helper()
	a := contract.Alert{ID: contract.AlertID(user, rule, 1_800_000_000), User: user, RuleID: rule, Symbol: "BTC-USD",
		Timeframe: contract.TF1h, Kind: contract.RuleThreshold, FiredAt: time.Now().UTC()}
	b, _ := json.Marshal(a)
	if _, err := js.Publish(context.Background(), contract.AlertIngestSubject(user, rule), b); err != nil {
		t.Fatal(err)
	}
}

// rules collects the rule ids that streamAlerts shows.
type rules struct {
	mu  sync.Mutex
	ids []string
}

func (r *rules) show(m jetstream.Msg) {
	var a contract.Alert
	_ = json.Unmarshal(m.Data(), &a)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, a.User+"/"+a.RuleID)
}

func (r *rules) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ids)
}

func TestStreamAlertsLast(t *testing.T) {
	// 3 users × 100 alerts: alice's are every third message, so the start
	// of the read must move back past bob's and carol's.
	nc := alertsStream(t, []string{"alice", "bob", "carol"}, 300)
	for _, tc := range []struct {
		name   string
		filter string
		last   int
		want   []string
	}{
		{"last 3 of alice", contract.AlertSubject("alice", ">"), 3, []string{"alice/rule-97", "alice/rule-98", "alice/rule-99"}},
		{"last 2 of everyone", contract.AlertSubjects, 2, []string{"bob/rule-99", "carol/rule-99"}},
		{"none", contract.AlertSubject("dave", ">"), 5, nil},
		{"zero", contract.AlertSubject("alice", ">"), 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got rules
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if err := streamAlerts(ctx, nc, tc.filter, tc.last, false, got.show); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got.get(), tc.want) {
				t.Errorf("shown %v, want %v", got.get(), tc.want)
			}
		})
	}
	t.Run("fewer than asked for", func(t *testing.T) {
		var got rules
		if err := streamAlerts(context.Background(), nc, contract.AlertSubject("carol", "rule-5"), 10, false, got.show); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.get(), []string{"carol/rule-5"}) {
			t.Errorf("shown %v", got.get())
		}
	})
}

func TestStreamAlertsFollow(t *testing.T) {
	nc := alertsStream(t, []string{"alice", "bob"}, 6)
	js, _ := jetstream.New(nc)
	var got rules
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- streamAlerts(ctx, nc, contract.AlertSubject("alice", ">"), 1, true, got.show) }()
	testenv.WaitFor(t, 10*time.Second, "the last alert of alice", func() bool { return len(got.get()) == 1 })
	publishTestAlert(t, js, "bob", "rule-9")
	publishTestAlert(t, js, "alice", "rule-9")
	testenv.WaitFor(t, 10*time.Second, "the new alert of alice", func() bool { return len(got.get()) == 2 })
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("follow ended with %v, want context.Canceled", err)
	}
	if want := []string{"alice/rule-2", "alice/rule-9"}; !slices.Equal(got.get(), want) {
		t.Errorf("shown %v, want %v", got.get(), want)
	}
}
