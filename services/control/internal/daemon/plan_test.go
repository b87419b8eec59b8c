package daemon_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"vigil.dev/pkg/contract"
)

// TestDryRunPlans runs each of the four plannable commands as a dry run:
// it succeeds with a plan hash, the stand-ins see only plan requests (no
// apply, forget, backfill or recompute), the desired state and Redis stay
// as they were and no progress is published; the real command given the
// plan succeeds while nothing changed and fails with conflict (changing
// nothing) once its inputs changed.
func TestDryRunPlans(t *testing.T) {
	e := newEnv(t, 2)
	e.startControl("c1", testSettings(), 0)
	ctx := context.Background()
	alice := e.users["alice"]
	for _, cmd := range []string{"pause", "resume"} { // seeds the desired state
		if r := e.result("alice", e.accept("alice", cmd, `{}`).ID); r.Status != contract.StatusSucceeded {
			t.Fatalf("%s: %+v", cmd, r.Error)
		}
	}
	key := fmt.Sprintf("candles:%d:%d:BTC-USD:1h", alice.id, alice.exchange)
	ind := fmt.Sprintf("indicator:%d:%d:BTC-USD:1h:ema_20", alice.id, alice.exchange)
	for _, k := range []string{key, ind} {
		if err := e.rdb.Set(ctx, k, "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		command, body string
		check         func(t *testing.T, res map[string]any)
	}{
		{"reload-settings", `{}`, func(t *testing.T, res map[string]any) {
			if res["changes"] == nil || res["services"] == nil {
				t.Fatalf("plan without changes or services: %v", res)
			}
		}},
		{"switch-mode", `{"mode":"scalper-macdv"}`, func(t *testing.T, res map[string]any) {
			if res["from"] != "position-monitor" || res["to"] != "scalper-macdv" {
				t.Fatalf("plan from/to: %v", res)
			}
		}},
		{"clear-cache", `{"scope":"symbol","symbol":"BTC-USD"}`, func(t *testing.T, res map[string]any) {
			keys, _ := res["keys"].(map[string]any)
			if keys["candles"] != 1.0 || keys["indicator"] != 1.0 || res["wouldDeleteCount"] != 2.0 {
				t.Fatalf("clear-cache plan keys: %v", res)
			}
		}},
		{"force-backfill", `{"symbol":"BTC-USD","timeframes":["1h","4h"]}`, func(t *testing.T, res map[string]any) {
			if res["pages"] != 4.0 || res["requests"] != 4.0 {
				t.Fatalf("backfill plan pages: %v", res)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.command, func(t *testing.T) {
			before := e.state("alice")
			dry := tt.body[:len(tt.body)-1]
			if dry != "{" {
				dry += ","
			}
			ack := e.accept("alice", tt.command, dry+`"dry_run":true}`)
			r := e.result("alice", ack.ID)
			if r.Status != contract.StatusSucceeded {
				t.Fatalf("dry run %s: %s %+v", tt.command, r.Status, r.Error)
			}
			res := decode[map[string]any](t, r.Result)
			hash, _ := res["plan"].(string)
			if res["dry_run"] != true || contract.ValidatePlanHash(hash) != nil {
				t.Fatalf("dry run result has no plan hash: %s", r.Result)
			}
			tt.check(t, res)
			for _, c := range e.rec.For(ack.ID) {
				if c.Verb != contract.VerbPlan {
					t.Fatalf("dry run sent %s.%s", c.Service, c.Verb)
				}
			}
			if len(e.callsOf(ack.ID, contract.VerbPlan)) == 0 {
				t.Fatalf("dry run asked no service")
			}
			after := e.state("alice")
			if after.KVRev != before.KVRev {
				t.Fatalf("dry run wrote the desired state: revision %d -> %d", before.KVRev, after.KVRev)
			}
			if n := e.rdb.Exists(ctx, key, ind).Val(); n != 2 {
				t.Fatalf("dry run deleted keys: %d of 2 left", n)
			}
			if p := e.progress("alice", ack.ID); len(p) != 0 {
				t.Fatalf("dry run published progress: %v", p)
			}
			// The same plan again gives the same hash.
			again := e.result("alice", e.accept("alice", tt.command, dry+`"dry_run":true}`).ID)
			if h := decode[map[string]any](t, again.Result)["plan"]; h != hash {
				t.Fatalf("second dry run: plan %v, first %s", h, hash)
			}
			real := e.accept("alice", tt.command, dry+`"plan":"`+hash+`"}`)
			if r := e.result("alice", real.ID); r.Status != contract.StatusSucceeded {
				t.Fatalf("real %s with an unchanged plan: %s %+v", tt.command, r.Status, r.Error)
			}
			if tt.command == "clear-cache" {
				for _, k := range []string{key, ind} {
					e.rdb.Set(ctx, k, "x", 0)
				}
			}
		})
	}

	t.Run("stale", func(t *testing.T) {
		// switch-mode left alice in scalper-macdv: plan the way back,
		// then change her state with a reload-settings.
		ack := e.accept("alice", "switch-mode", `{"mode":"position-monitor","dry_run":true}`)
		hash := decode[map[string]any](t, e.result("alice", ack.ID).Result)["plan"].(string)
		if r := e.result("alice", e.accept("alice", "reload-settings", `{}`).ID); r.Status != contract.StatusSucceeded {
			t.Fatalf("reload-settings: %+v", r.Error)
		}
		before := e.state("alice")
		stale := e.accept("alice", "switch-mode", `{"mode":"scalper-macdv","plan":"`+hash+`"}`)
		r := e.result("alice", stale.ID)
		if r.Status != contract.StatusFailed || r.Error == nil || r.Error.Code != contract.CodeConflict {
			t.Fatalf("stale plan: %s %+v", r.Status, r.Error)
		}
		if len(e.rec.For(stale.ID)) != 0 || e.state("alice").KVRev != before.KVRev {
			t.Fatalf("a stale plan changed something: calls %v", e.rec.For(stale.ID))
		}
		// A clear-cache plan goes stale when the keys it counted change.
		ack = e.accept("alice", "clear-cache", `{"scope":"all","dry_run":true}`)
		hash = decode[map[string]any](t, e.result("alice", ack.ID).Result)["plan"].(string)
		e.rdb.Set(ctx, fmt.Sprintf("candles:%d:%d:ETH-USD:1h", alice.id, alice.exchange), "x", 0)
		r = e.result("alice", e.accept("alice", "clear-cache", `{"scope":"all","plan":"`+hash+`"}`).ID)
		if r.Status != contract.StatusFailed || r.Error.Code != contract.CodeConflict {
			t.Fatalf("stale clear-cache plan: %s %+v", r.Status, r.Error)
		}
		if n := e.rdb.Exists(ctx, key, ind).Val(); n != 2 {
			t.Fatalf("a stale clear-cache deleted keys")
		}
	})

	t.Run("invalid", func(t *testing.T) {
		for _, body := range []string{`{"scope":"all","dry_run":true,"plan":"` + hashOf('a') + `"}`, `{"scope":"all","plan":"nope"}`} {
			ack, _ := e.send("alice", "clear-cache", body, nil)
			if ack.Accepted || ack.Error == nil || ack.Error.Code != contract.CodeInvalidPayload {
				t.Fatalf("%s: %+v", body, ack)
			}
		}
		ack, _ := e.send("alice", "pause", `{"dry_run":true}`, nil)
		if ack.Accepted || !slices.ContainsFunc(ack.Error.Fields, func(f contract.FieldError) bool { return f.Field == "dry_run" }) {
			t.Fatalf("pause dry run: %+v %+v", ack, ack.Error)
		}
	})
}

func hashOf(c byte) string {
	b := make([]byte, contract.PlanHashLength)
	for i := range b {
		b[i] = c
	}
	return string(b)
}
