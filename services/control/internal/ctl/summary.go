package ctl

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"vigil.dev/pkg/contract"
)

// printer writes ACKs and results: readable summaries, or with json the
// raw JSON as received, one document per line.
type printer struct {
	stdout io.Writer
	json   bool
}

// ack prints an ACK. A rejection prints nothing in readable mode: the
// error line on stderr says it all.
func (p printer) ack(ack contract.Ack, raw []byte, noWait bool) {
	if p.json {
		p.raw(raw)
		return
	}
	if !ack.Accepted {
		return
	}
	fmt.Fprintf(p.stdout, "%s for %s accepted: id %s, %d ahead in the queue\n", ack.Command, ack.User, ack.ID, ack.Position)
	if noWait {
		fmt.Fprintf(p.stdout, "result will be on %s (nats sub --stream %s --all %s)\n",
			contract.ResultSubject(ack.User, ack.ID), contract.StreamResults, contract.ResultSubject(ack.User, ack.ID))
	}
}

// raw prints a JSON document on one line.
func (p printer) raw(raw []byte) {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		buf.Reset()
		buf.Write(bytes.TrimSpace(raw))
	}
	buf.WriteByte('\n')
	_, _ = p.stdout.Write(buf.Bytes())
}

// result prints a command's final result:
//
//	pause for demo succeeded in 142ms
//	  id      01JD...
//	  result  status: paused
//	  steps   vigil-alerts pause  1/1 instances  1.2ms
func (p printer) result(r contract.Result, raw []byte) {
	if p.json {
		p.raw(raw)
		return
	}
	took := ""
	if !r.AcceptedAt.IsZero() && !r.FinishedAt.IsZero() {
		took = " in " + r.FinishedAt.Sub(r.AcceptedAt).Round(time.Millisecond).String()
	}
	fmt.Fprintf(p.stdout, "%s for %s %s%s\n", r.Command, r.User, r.Status, took)
	tw := tabwriter.NewWriter(p.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  id\t%s\n", r.ID)
	if r.TraceID != "" {
		fmt.Fprintf(tw, "  trace\t%s\n", r.TraceID)
	}
	if r.Error != nil {
		fmt.Fprintf(tw, "  error\t%s\n", r.Error.Error())
		for _, f := range r.Error.Fields {
			if !strings.Contains(r.Error.Message, f.Error()) {
				fmt.Fprintf(tw, "  \t%s\n", f.Error())
			}
		}
	}
	label := "result"
	lines := resultLines(r.Result)
	if rb, ok := rollbackOf(r); ok {
		lines = rollbackLines(rb)
	}
	for _, line := range lines {
		fmt.Fprintf(tw, "  %s\t%s\n", label, line)
		label = ""
	}
	label = "steps"
	for i, s := range r.Steps {
		if s.Compensation && (i == 0 || !r.Steps[i-1].Compensation) {
			label = "rollback"
		}
		for _, line := range stepLines(s) {
			fmt.Fprintf(tw, "  %s\t%s\n", label, line)
			label = ""
		}
	}
	_ = tw.Flush()
}

// stepLines renders a step: "<service> <verb>  2/3 instances  1.2ms",
// then one line per instance that failed or is missing, with its reason.
// A step without per-instance outcomes (an older result) names its
// missing instances and error on the step's line.
func stepLines(s contract.Step) []string {
	line := fmt.Sprintf("%s %s\t%d/%d instances\t%.1fms", s.Service, s.Verb, s.Acked, s.Instances, s.Ms)
	if len(s.Outcomes) == 0 {
		if len(s.Missing) > 0 {
			line += "\tmissing " + strings.Join(s.Missing, ", ")
		}
		if s.Error != nil {
			line += "\t" + s.Error.Error()
		}
		return []string{line}
	}
	lines := []string{line}
	for _, o := range s.Outcomes {
		if o.Outcome == contract.InstanceAnswered {
			continue
		}
		reason := ""
		if o.Error != nil {
			reason = ": " + o.Error.Error()
		}
		lines = append(lines, fmt.Sprintf("  %s %s%s", o.Instance, o.Outcome, reason))
	}
	if len(lines) == 1 && s.Error != nil {
		lines[0] += "\t" + s.Error.Error()
	}
	return lines
}

// rollbackOf decodes the result of a failed reload-settings or
// switch-mode that rolled back (contract.Rollback).
func rollbackOf(r contract.Result) (contract.Rollback, bool) {
	var rb struct {
		contract.Rollback
		RolledBack *bool `json:"rolled_back"`
	}
	if r.Status != contract.StatusFailed || json.Unmarshal(r.Result, &rb) != nil || rb.RolledBack == nil {
		return contract.Rollback{}, false
	}
	rb.Rollback.RolledBack = *rb.RolledBack
	return rb.Rollback, true
}

// rollbackLines renders a rollback: whether it completed, the revisions,
// and, when it did not, why and only the instances not on the restored
// revision.
func rollbackLines(rb contract.Rollback) []string {
	if rb.RolledBack {
		return []string{fmt.Sprintf("rolled back: every instance is on revision %d again (%d not applied)", rb.Revision, rb.Attempted)}
	}
	lines := []string{fmt.Sprintf("NOT rolled back: revision %d attempted, %d desired (restored: %v)", rb.Attempted, rb.Revision, rb.Restored)}
	if rb.Reason != "" {
		lines = append(lines, rb.Reason)
	}
	for _, in := range rb.Instances {
		switch in.Revision {
		case rb.Revision:
		case 0:
			why := "answered neither apply"
			if in.Unreachable {
				why += " nor a status probe"
			}
			lines = append(lines, fmt.Sprintf("%s %s: revision unknown (%s)", in.Service, in.Instance, why))
		default:
			probed := ""
			if in.Probed {
				probed = " (its status said)"
			}
			lines = append(lines, fmt.Sprintf("%s %s: on revision %d%s", in.Service, in.Instance, in.Revision, probed))
		}
	}
	return lines
}

// resultLines renders a result object as one "key: value" line per field,
// sorted by key; an object of scalars as "k=v k=v", a list of scalars
// comma-separated, anything else as compact JSON.
func resultLines(raw json.RawMessage) []string {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return []string{compactJSON(raw)}
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	lines := make([]string, 0, len(keys))
	for _, k := range keys {
		lines = append(lines, k+": "+renderValue(fields[k]))
	}
	return lines
}

// renderValue renders one field value of a result.
func renderValue(raw json.RawMessage) string {
	if s, ok := scalar(raw); ok {
		return s
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil {
		items := make([]string, 0, len(list))
		for _, item := range list {
			s, ok := scalar(item)
			if !ok {
				return compactJSON(raw)
			}
			items = append(items, s)
		}
		if len(items) == 0 {
			return "none"
		}
		return strings.Join(items, ",")
	}
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) == nil {
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, compareKeys)
		pairs := make([]string, 0, len(keys))
		for _, k := range keys {
			s, ok := scalar(obj[k])
			if !ok {
				return compactJSON(raw)
			}
			pairs = append(pairs, k+"="+s)
		}
		if len(pairs) == 0 {
			return "none"
		}
		return strings.Join(pairs, " ")
	}
	return compactJSON(raw)
}

// compareKeys orders timeframes by length of bar (1m before 1h) and other
// keys alphabetically.
func compareKeys(a, b string) int {
	da, db := contract.Timeframe(a).Duration(), contract.Timeframe(b).Duration()
	if da != 0 && db != 0 {
		return cmp.Compare(da, db)
	}
	return strings.Compare(a, b)
}

// scalar renders a JSON string, number, bool or null.
func scalar(raw json.RawMessage) (string, bool) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", false
	}
	switch v := v.(type) {
	case string:
		return v, true
	case float64, bool:
		return compactJSON(raw), true
	case nil:
		return "null", true
	}
	return "", false
}

func compactJSON(raw json.RawMessage) string {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return string(raw)
	}
	return buf.String()
}
