package daemon_test

import (
	"strings"
	"testing"

	"vigil.dev/pkg/contract"
	"vigil.dev/services/control/internal/intake"
)

// TestCommandsPerMinute runs control with VIGIL_COMMANDS_PER_MINUTE=3:
// alice's fourth command in a minute is rejected busy (429) with the limit
// named and is not recorded, bob's commands are still taken, and alice's
// pause (exempt, it only reduces work) is taken over the limit.
func TestCommandsPerMinute(t *testing.T) {
	e := newEnv(t, 1)
	s := testSettings()
	s.CommandsPerMin = 3
	e.startControl("c1", s, 0)
	for i := range 3 {
		if ack := e.accept("alice", "reload-settings", `{"dry_run":true}`); !ack.Accepted {
			t.Fatalf("command %d of 3 rejected: %+v", i+1, ack.Error)
		}
	}
	ack, hdr := e.send("alice", "reload-settings", `{"dry_run":true}`, nil)
	if ack.Accepted || ack.Error == nil {
		t.Fatalf("fourth command accepted: %+v", ack)
	}
	if ack.Error.Code != contract.CodeBusy || !strings.Contains(ack.Error.Message, intake.CommandsPerMinuteLimit+" is 3 for user alice") {
		t.Errorf("error = %s: %s, want busy naming %s", ack.Error.Code, ack.Error.Message, intake.CommandsPerMinuteLimit)
	}
	if got := hdr.Get("Nats-Service-Error-Code"); got != "429" {
		t.Errorf("Nats-Service-Error-Code = %q, want 429", got)
	}
	if ack.ID != "" {
		if _, found := e.logRow(ack.ID); found {
			t.Errorf("rejected command %s is in command_log", ack.ID)
		}
	}
	if ack := e.accept("bob", "reload-settings", `{"dry_run":true}`); !ack.Accepted {
		t.Errorf("bob's command rejected by alice's limit: %+v", ack.Error)
	}
	if ack := e.accept("alice", "pause", `{}`); !ack.Accepted {
		t.Errorf("alice's pause rejected over the limit: %+v", ack.Error)
	}
}
