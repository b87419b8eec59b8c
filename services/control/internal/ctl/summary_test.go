package ctl

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"vigil.dev/pkg/contract"
)

func TestResultLines(t *testing.T) {
	for _, tc := range []struct {
		name   string
		result string
		want   []string
	}{
		{"none", ``, nil},
		{"null", `null`, nil},
		{"scalars sorted by key", `{"status":"paused","n":3,"ok":true,"x":null}`, []string{"n: 3", "ok: true", "status: paused", "x: null"}},
		{"timeframes by bar length", `{"candles":{"1d":1,"4h":2,"1m":3,"1h":4}}`, []string{"candles: 1m=3 1h=4 4h=2 1d=1"}},
		{"keys alphabetically", `{"gap":{"ETH-USD":1,"BTC-USD":2}}`, []string{"gap: BTC-USD=2 ETH-USD=1"}},
		{"list of scalars", `{"symbols":["BTC-USD","ETH-USD"],"none":[]}`, []string{"none: none", "symbols: BTC-USD,ETH-USD"}},
		{"empty object", `{"changes":{}}`, []string{"changes: none"}},
		{"nested objects as JSON", `{"gap_filled":{"BTC-USD":{"1m": 3}}}`, []string{`gap_filled: {"BTC-USD":{"1m":3}}`}},
		{"list of objects as JSON", `{"rules":[{"id":"a"}]}`, []string{`rules: [{"id":"a"}]`}},
		{"not an object", `[1, 2]`, []string{`[1,2]`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := resultLines(json.RawMessage(tc.result)); !slices.Equal(got, tc.want) {
				t.Errorf("resultLines(%s) = %q, want %q", tc.result, got, tc.want)
			}
		})
	}
}

func TestPrinterResult(t *testing.T) {
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	r := contract.Result{ID: "01JD", User: "demo", Command: contract.CmdPause, Status: contract.StatusFailed,
		Error: &contract.Error{Code: contract.CodeTimeout, Message: "vigil-feed pause: 1 of 2 instances did not answer",
			Fields: []contract.FieldError{{Field: "feed-2", Problem: "no answer"}}},
		Result: json.RawMessage(`{"status":"paused"}`),
		Steps: []contract.Step{
			{Service: "vigil-alerts", Verb: contract.VerbPause, Instances: 1, Acked: 1, Ms: 1.25},
			{Service: "vigil-feed", Verb: contract.VerbPause, Instances: 2, Acked: 1, Ms: 5000, Missing: []string{"feed-2"},
				Error: &contract.Error{Code: contract.CodeTimeout, Message: "no answer"}},
		},
		AcceptedAt: at, FinishedAt: at.Add(5012 * time.Millisecond), TraceID: "4bf92f"}
	var buf bytes.Buffer
	printer{stdout: &buf}.result(r, nil)
	want := `pause for demo failed in 5.012s
  id      01JD
  trace   4bf92f
  error   timeout: vigil-feed pause: 1 of 2 instances did not answer
          feed-2: no answer
  result  status: paused
  steps   vigil-alerts pause  1/1 instances  1.2ms
          vigil-feed pause    1/2 instances  5000.0ms  missing feed-2  timeout: no answer
`
	if buf.String() != want {
		t.Errorf("summary:\n%s\nwant:\n%s", buf.String(), want)
	}

	t.Run("per instance outcomes and a rollback", func(t *testing.T) {
		r := contract.Result{ID: "01JE", User: "demo", Command: contract.CmdReloadSettings, Status: contract.StatusFailed,
			Error:  &contract.Error{Code: contract.CodeInternal, Message: "vigil-indicators apply: not confirmed by ind-2 (internal: bad params)"},
			Result: json.RawMessage(`{"rolled_back":true,"revision":7,"attempted_revision":8,"restored":true,"instances":[]}`),
			Steps: []contract.Step{
				{Service: "vigil-feed", Verb: contract.VerbApply, Instances: 2, Acked: 2, Ms: 3, Outcomes: []contract.InstanceOutcome{
					{Instance: "feed-1", Outcome: contract.InstanceAnswered}, {Instance: "feed-2", Outcome: contract.InstanceAnswered}}},
				{Service: "vigil-indicators", Verb: contract.VerbApply, Instances: 3, Acked: 1, Ms: 2000, Missing: []string{"ind-2", "ind-3"},
					Error: &contract.Error{Code: contract.CodeInternal, Message: "not confirmed by ..."},
					Outcomes: []contract.InstanceOutcome{
						{Instance: "ind-1", Outcome: contract.InstanceAnswered},
						{Instance: "ind-2", Outcome: contract.InstanceFailed, Error: &contract.Error{Code: contract.CodeInternal, Message: "bad params"}},
						{Instance: "ind-3", Outcome: contract.InstanceMissing, Error: &contract.Error{Code: contract.CodeTimeout, Message: "no answer within 2s"}}}},
				{Service: "vigil-indicators", Verb: contract.VerbApply, Instances: 2, Acked: 2, Ms: 4, Compensation: true, Outcomes: []contract.InstanceOutcome{
					{Instance: "ind-1", Outcome: contract.InstanceAnswered}, {Instance: "ind-2", Outcome: contract.InstanceAnswered}}},
				{Service: "vigil-feed", Verb: contract.VerbApply, Instances: 0, Acked: 0, Ms: 5, Compensation: true,
					Error: &contract.Error{Code: contract.CodeUnavailable, Message: "no instance is running"}, Outcomes: []contract.InstanceOutcome{}},
			},
			AcceptedAt: at, FinishedAt: at.Add(2100 * time.Millisecond)}
		var buf bytes.Buffer
		printer{stdout: &buf}.result(r, nil)
		want := `reload-settings for demo failed in 2.1s
  id        01JE
  error     internal: vigil-indicators apply: not confirmed by ind-2 (internal: bad params)
  result    rolled back: every instance is on revision 7 again (8 not applied)
  steps     vigil-feed apply        2/2 instances  3.0ms
            vigil-indicators apply  1/3 instances  2000.0ms
              ind-2 failed: internal: bad params
              ind-3 missing: timeout: no answer within 2s
  rollback  vigil-indicators apply  2/2 instances  4.0ms
            vigil-feed apply        0/0 instances  5.0ms  unavailable: no instance is running
`
		if buf.String() != want {
			t.Errorf("summary:\n%s\nwant:\n%s", buf.String(), want)
		}
	})
	t.Run("an incomplete rollback names the instances not on the restored revision", func(t *testing.T) {
		r := contract.Result{ID: "01JF", User: "demo", Command: contract.CmdSwitchMode, Status: contract.StatusFailed,
			Result: json.RawMessage(`{"rolled_back":false,"restored":true,"revision":7,"attempted_revision":8,
				"reason":"vigil-feed apply not confirmed by feed-2","instances":[
				{"service":"vigil-feed","instance":"feed-1","revision":7},{"service":"vigil-feed","instance":"feed-2","revision":8},
				{"service":"vigil-feed","instance":"feed-3","revision":8,"probed":true},
				{"service":"vigil-indicators","instance":"ind-2","revision":0},
				{"service":"vigil-indicators","instance":"ind-3","revision":0,"unreachable":true}]}`)}
		var buf bytes.Buffer
		printer{stdout: &buf}.result(r, nil)
		want := `switch-mode for demo failed
  id      01JF
  result  NOT rolled back: revision 8 attempted, 7 desired (restored: true)
          vigil-feed apply not confirmed by feed-2
          vigil-feed feed-2: on revision 8
          vigil-feed feed-3: on revision 8 (its status said)
          vigil-indicators ind-2: revision unknown (answered neither apply)
          vigil-indicators ind-3: revision unknown (answered neither apply nor a status probe)
`
		if buf.String() != want {
			t.Errorf("summary:\n%s\nwant:\n%s", buf.String(), want)
		}
	})

	buf.Reset()
	printer{stdout: &buf, json: true}.result(r, []byte("{\n  \"id\": \"01JD\"\n}"))
	if buf.String() != `{"id":"01JD"}`+"\n" {
		t.Errorf("json mode printed %q, want the compact raw JSON", buf.String())
	}
}

func TestPrinterAck(t *testing.T) {
	ack := contract.Ack{ID: "x1", User: "demo", Command: contract.CmdResume, Accepted: true, Position: 2}
	for _, tc := range []struct {
		name   string
		p      func(*bytes.Buffer) printer
		ack    contract.Ack
		noWait bool
		want   string
	}{
		{"accepted", func(b *bytes.Buffer) printer { return printer{stdout: b} }, ack, false,
			"resume for demo accepted: id x1, 2 ahead in the queue\n"},
		{"accepted, no wait", func(b *bytes.Buffer) printer { return printer{stdout: b} }, ack, true,
			"resume for demo accepted: id x1, 2 ahead in the queue\nresult will be on vigil.result.demo.x1 (nats sub --stream VIGIL_RESULTS --all vigil.result.demo.x1)\n"},
		{"rejected prints nothing", func(b *bytes.Buffer) printer { return printer{stdout: b} }, contract.Ack{User: "demo"}, false, ""},
		{"json", func(b *bytes.Buffer) printer { return printer{stdout: b, json: true} }, ack, false, `{"a":1}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			tc.p(&buf).ack(tc.ack, []byte(` {"a": 1} `), tc.noWait)
			if buf.String() != tc.want {
				t.Errorf("printed %q, want %q", buf.String(), tc.want)
			}
		})
	}
}
