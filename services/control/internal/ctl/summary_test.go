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
