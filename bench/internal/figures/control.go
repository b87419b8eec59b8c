package figures

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"vigil.dev/bench/internal/report"
	"vigil.dev/bench/internal/stack"
	"vigil.dev/bench/internal/stats"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/natsx"
)

// controlStack is the stack ack and sequence share: every service (the
// feed on its simulator), one instance each until sequence adds two more,
// and the users both figures command.
type controlStack struct {
	*benchStack
	cmd       *commander
	ackUsers  []string
	seqUsers  []string
	instances int
}

// stackServices are the services of a full stack, in start order.
var stackServices = []string{stack.Feed, stack.Indicators, stack.Alerts, stack.Control}

// commandUserSettings are the settings of the users ack and sequence
// command: the demo's position-monitor user with one symbol.
func commandUserSettings(int) contract.Settings {
	seventy := 70.0
	return contract.Settings{Mode: contract.ModePositionMonitor, Symbols: []string{"BTC-USD"},
		Rules: map[contract.Mode][]contract.Rule{contract.ModePositionMonitor: {
			{ID: "rsi-high", Symbol: "BTC-USD", Timeframe: contract.TF1h, Kind: contract.RuleThreshold,
				SeriesRef: contract.SeriesRef{Indicator: "rsi_14"}, Op: contract.OpAbove, Value: &seventy},
		}}}
}

// sharedStack starts the shared stack on first use.
func (e *Env) sharedStack(ctx context.Context) (*controlStack, error) {
	if e.shared != nil {
		return e.shared, nil
	}
	e.Log.Info("starting the command stack (NATS, Redis, PostgreSQL, one instance of each service)")
	s, err := e.newStack(ctx, "command")
	if err != nil {
		return nil, err
	}
	cs := &controlStack{benchStack: s}
	for i := range 8 {
		cs.ackUsers = append(cs.ackUsers, fmt.Sprintf("ack-%d", i))
	}
	for i := range 3 {
		cs.seqUsers = append(cs.seqUsers, fmt.Sprintf("seq-%d", i))
	}
	users := append(append([]string(nil), cs.ackUsers...), cs.seqUsers...)
	if _, err := s.seed(ctx, users, commandUserSettings); err == nil {
		_, err = s.start(ctx, stackServices, 1, 1)
		if err == nil {
			err = s.waitStates(ctx, users)
		}
		if err == nil {
			cs.cmd, err = newCommander(s.nc)
		}
		if err == nil {
			err = cs.settle(ctx, users)
		}
		if err != nil {
			return nil, errors.Join(err, s.Close())
		}
	} else {
		return nil, errors.Join(err, s.Close())
	}
	cs.instances = 1
	e.shared = cs
	return cs, nil
}

// settle pauses and resumes every user once, one after the other: the
// feed's start-up gap fills end (a pause cancels them, the resume fills
// the gap before it answers), so the figures start on a quiet stack.
func (cs *controlStack) settle(ctx context.Context, users []string) error {
	for _, u := range users {
		for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
			res, _, err := cs.cmd.run(ctx, u, cmd, nil, time.Minute)
			if err != nil {
				return err
			}
			if res.Status != contract.StatusSucceeded {
				return fmt.Errorf("%w: %s of %s while settling: %s", ErrFigure, cmd, u, errText(res.Error))
			}
		}
	}
	return nil
}

// Close stops the shared stack.
func (cs *controlStack) Close() error {
	if cs.cmd != nil {
		cs.cmd.close()
	}
	return cs.benchStack.Close()
}

// benchAckStream creates BENCH_ACK, the stream of the baselines' and
// floors' publish-acks (file storage, the replicas of control's queue
// bucket), and returns its replicas.
func (cs *controlStack) benchAckStream(ctx context.Context) (int, error) {
	queue, err := cs.js.Stream(ctx, "KV_"+natsx.BucketQueue)
	if err != nil {
		return 0, fmt.Errorf("control's queue bucket: %w", err)
	}
	replicas := queue.CachedInfo().Config.Replicas
	if _, err := cs.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH_ACK", Subjects: []string{"bench.ack.>"},
		Storage: jetstream.FileStorage, Replicas: replicas, MaxMsgsPerSubject: 1, Duplicates: 2 * time.Minute}); err != nil {
		return 0, fmt.Errorf("baseline stream: %w", err)
	}
	return max(replicas, 1), nil
}

// ackReply is what the bare responder answers: an ACK-sized body.
var ackReply = []byte(`{"id":"01JD00000000000000000000000","user":"ack-0","command":"pause","accepted":true,"position":0}`)

// Ack measures figure 1: the ACK latency of pause and resume commands
// sent alternately to a user (round robin over eight users; a user's next
// command waits for its previous result, so no queue builds up), each
// interleaved with a bare NATS request to a trivial responder on the same
// server and with a bare JetStream publish-ack (file storage, the replicas
// of control's queue bucket), and with a request to a responder in a
// process of its own that answers after such a publish-ack: the ACK is a
// request to vigil-control answered after one compare-and-set write to
// that bucket, so that request is its floor.
func Ack(ctx context.Context, env *Env, out *Output) error {
	cs, err := env.sharedStack(ctx)
	if err != nil {
		return err
	}
	replicas, err := cs.benchAckStream(ctx)
	if err != nil {
		return err
	}
	responder, err := nats.Connect(cs.servers.NATSURL(), nats.Name("bench-responder"))
	if err != nil {
		return err
	}
	defer responder.Close()
	if _, err := responder.Subscribe("bench.rtt", func(m *nats.Msg) { _ = m.Respond(ackReply) }); err != nil {
		return err
	}
	if err := responder.Flush(); err != nil {
		return err
	}
	stopFloor, err := startFloor(ctx, cs.nc, cs.servers.NATSURL())
	if err != nil {
		return err
	}
	defer stopFloor()
	const warmup = 20
	n := env.Opts.AckIterations
	env.Log.Info("ack: commands and bare requests", "iterations", n)
	var vigil, bare, pg, jsAck, floor, apartRTT, apartAck []time.Duration
	pending := map[string]string{}
	paused := map[string]bool{}
	failed := map[string]int{}
	var waitProfile func()
	for i := range warmup + n {
		if i == warmup {
			control := cs.procs(stack.Control)
			waitProfile = env.profile(ctx, "ack", control, 10*time.Second, out)
		}
		began := time.Now()
		if _, err := cs.nc.Request("bench.rtt", nil, 5*time.Second); err != nil {
			return fmt.Errorf("bare request: %w", err)
		}
		rtt := time.Since(began)
		user := cs.ackUsers[i%len(cs.ackUsers)]
		began = time.Now()
		if _, err := cs.js.Publish(ctx, "bench.ack."+user, ackReply, jetstream.WithMsgID(fmt.Sprint("bench-", i))); err != nil {
			return fmt.Errorf("bare publish-ack: %w", err)
		}
		jsRTT := time.Since(began)
		began = time.Now()
		m, err := cs.nc.Request(floorSubject, ackReply, 5*time.Second)
		if err != nil {
			return fmt.Errorf("floor request: %w", err)
		}
		if string(m.Data) != string(ackReply) {
			return fmt.Errorf("floor request: the responder's publish-ack failed: %s", m.Data)
		}
		floorRTT := time.Since(began)
		rttApart, ackApart, err := measureApart(cs.nc)
		if err != nil {
			return err
		}
		began = time.Now()
		if _, err := cs.pool.Exec(ctx, "SELECT 1"); err != nil {
			return fmt.Errorf("postgres round trip: %w", err)
		}
		pgRTT := time.Since(began)
		if id := pending[user]; id != "" {
			res, _, err := cs.cmd.wait(ctx, id, time.Minute)
			if err != nil {
				return err
			}
			if res.Status != contract.StatusSucceeded {
				failed[string(res.Command)+": "+errText(res.Error)]++
			}
		}
		cmd := contract.CmdPause
		if paused[user] {
			cmd = contract.CmdResume
		}
		ack, ackRTT, err := cs.cmd.send(ctx, user, cmd, nil)
		if err != nil {
			return err
		}
		pending[user], paused[user] = ack.ID, !paused[user]
		if i >= warmup {
			bare, vigil, pg, jsAck = append(bare, rtt), append(vigil, ackRTT), append(pg, pgRTT), append(jsAck, jsRTT)
			floor, apartRTT, apartAck = append(floor, floorRTT), append(apartRTT, rttApart), append(apartAck, ackApart)
		}
	}
	for _, id := range pending {
		if _, _, err := cs.cmd.wait(ctx, id, time.Minute); err != nil {
			return err
		}
	}
	waitProfile()
	value := report.Times(stats.Summarize(stats.Millis(vigil)))
	row := report.Row{Number: 1, Figure: "ack", Name: "command ACK latency p50/p99", Unit: "ms", Value: value, Target: "≤ 1.5×"}
	row.Compare(fmt.Sprintf("bare JetStream publish-ack (R%d, file)", replicas), report.Times(stats.Summarize(stats.Millis(jsAck))), false)
	row.SetMet(row.Ratio != nil && row.Ratio.Median <= 1.5 && row.Ratio.Tail <= 1.5)
	pgSum := stats.Summarize(stats.Millis(pg))
	row.Note = fmt.Sprintf("%d commands over %d users, pause/resume alternating; the ACK is one KV compare-and-set; Postgres SELECT 1 round trip %.2f / %.2f ms (not on the ACK path)", n, len(cs.ackUsers), pgSum.Median, pgSum.P99)
	vsBare := report.Row{Number: 1, Figure: "ack", Name: "command ACK latency p50/p99 vs NATS", Unit: "ms", Value: value, Target: "≤ 3×"}
	vsBare.Compare("bare NATS request-reply RTT", report.Times(stats.Summarize(stats.Millis(bare))), false)
	vsBare.SetMet(vsBare.Ratio != nil && vsBare.Ratio.Median <= 3 && vsBare.Ratio.Tail <= 3)
	vsBare.Note = "same run, interleaved"
	vsFloor := report.Row{Number: 1, Figure: "ack", Name: "command ACK latency p50/p99 vs floor", Unit: "ms", Value: value, Target: "reported",
		Note: "floor: a request to a responder in its own process that answers after a JetStream publish-ack (BENCH_ACK), the least an ACK sent after a durable write costs; same run, interleaved"}
	vsFloor.Compare("request + publish-ack in another process", report.Times(stats.Summarize(stats.Millis(floor))), false)
	vsApartAck := report.Row{Number: 1, Figure: "ack", Name: "command ACK latency p50/p99 vs publish-ack of another process", Unit: "ms", Value: value, Target: "≤ 1.5×",
		Note: "a JetStream publish-ack (BENCH_ACK) timed by a client in its own process, as vigil-control makes it; same run, interleaved"}
	vsApartAck.Compare(fmt.Sprintf("publish-ack (R%d, file) from another process", replicas), report.Times(stats.Summarize(stats.Millis(apartAck))), false)
	vsApartAck.SetMet(vsApartAck.Ratio != nil && vsApartAck.Ratio.Median <= 1.5 && vsApartAck.Ratio.Tail <= 1.5)
	vsApartRTT := report.Row{Number: 1, Figure: "ack", Name: "command ACK latency p50/p99 vs request to another process", Unit: "ms", Value: value, Target: "≤ 3×",
		Note: "a bare request to a trivial responder in its own process, as `nats req` sees one; same run, interleaved"}
	vsApartRTT.Compare("bare request to another process", report.Times(stats.Summarize(stats.Millis(apartRTT))), false)
	vsApartRTT.SetMet(vsApartRTT.Ratio != nil && vsApartRTT.Ratio.Median <= 3 && vsApartRTT.Ratio.Tail <= 3)
	out.add("ack", map[string]any{"commands": n, "users": len(cs.ackUsers), "failed_results": failed,
		"vigil_ms": stats.Summarize(stats.Millis(vigil)), "bare_ms": stats.Summarize(stats.Millis(bare)),
		"jetstream_publish_ack_ms": stats.Summarize(stats.Millis(jsAck)), "floor_ms": stats.Summarize(stats.Millis(floor)),
		"request_apart_ms": stats.Summarize(stats.Millis(apartRTT)), "publish_ack_apart_ms": stats.Summarize(stats.Millis(apartAck)),
		"replicas": replicas, "postgres_select1_ms": pgSum}, row, vsBare, vsFloor, vsApartAck, vsApartRTT)
	return nil
}

// measureApart times a bare request to the floor responder's process and
// has that process time one JetStream publish-ack of its own.
func measureApart(nc *nats.Conn) (rtt, publishAck time.Duration, err error) {
	began := time.Now()
	if _, err := nc.Request(floorRTTSubject, ackReply, 5*time.Second); err != nil {
		return 0, 0, fmt.Errorf("request to another process: %w", err)
	}
	rtt = time.Since(began)
	m, err := nc.Request(floorPublishSubject, nil, 5*time.Second)
	if err != nil {
		return 0, 0, fmt.Errorf("publish-ack from another process: %w", err)
	}
	ns, err := strconv.ParseInt(string(m.Data), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: publish-ack from another process: %s", ErrFigure, m.Data)
	}
	return rtt, time.Duration(ns), nil
}

// errText is a contract error's code and message, or "".
func errText(e *contract.Error) string {
	if e == nil {
		return ""
	}
	return string(e.Code) + " " + e.Message
}

// procs are the running processes of service.
func (s *benchStack) procs(service string) []*stack.Proc {
	var out []*stack.Proc
	for _, p := range s.launcher.Procs() {
		if p.Service == service {
			if exited, _ := p.Exited(); !exited {
				out = append(out, p)
			}
		}
	}
	return out
}

// sgRequest is the body the trivial responder group gets: the size of a
// vigil.svc request carrying a desired state.
var sgRequest = []byte(`{"command_id":"01JD00000000000000000000000","user":"seq-0","state":{"user":"seq-0","user_id":1,"exchange_id":1,"paused":true,"mode":"position-monitor","symbols":["BTC-USD"],"revision":1,"settings":{"mode":"position-monitor","symbols":["BTC-USD"],"indicators":{},"rules":{"position-monitor":[{"id":"rsi-high","symbol":"BTC-USD","timeframe":"1h","kind":"threshold","indicator":"rsi_14","op":"above","value":70}]}},"command_id":"01JD00000000000000000000000","updated_at":"2026-01-01T00:00:00Z"}}`)

// sgReply is what each responder answers: the size of a vigil.svc reply.
var sgReply = []byte(`{"service":"vigil-alerts","instance":"NBENCH00000000000000000","ok":true,"result":{"owner":true,"status":"paused"}}`)

// responderGroup is n trivial responders on their own connections, each
// answering every request on bench.sg (no queue group), like the
// instances of a service answer vigil.svc.
type responderGroup struct {
	conns []*nats.Conn
	n     int
}

func startResponders(url string, n int) (*responderGroup, error) {
	g := &responderGroup{n: n}
	for i := range n {
		nc, err := nats.Connect(url, nats.Name(fmt.Sprintf("bench-sg-%d", i)))
		if err != nil {
			g.close()
			return nil, err
		}
		g.conns = append(g.conns, nc)
		if _, err := nc.Subscribe("bench.sg", func(m *nats.Msg) { _ = m.Respond(sgReply) }); err != nil {
			g.close()
			return nil, err
		}
		if err := nc.Flush(); err != nil {
			g.close()
			return nil, err
		}
	}
	return g, nil
}

func (g *responderGroup) close() {
	for _, nc := range g.conns {
		nc.Close()
	}
}

// scatterGather sends one request on a fresh inbox and waits for the
// group's answers.
func (g *responderGroup) scatterGather(nc *nats.Conn) error { return scatterGather(nc, g.n) }

// scatterGather sends one request on bench.sg on a fresh inbox and waits
// for n answers.
func scatterGather(nc *nats.Conn, n int) error {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return err
	}
	defer sub.Unsubscribe() //nolint:errcheck // best effort
	if err := nc.PublishRequest("bench.sg", inbox, sgRequest); err != nil {
		return err
	}
	for range n {
		if _, err := sub.NextMsg(5 * time.Second); err != nil {
			return fmt.Errorf("scatter-gather over %d responders: %w", n, err)
		}
	}
	return nil
}

// sequenceRun is the measurement of one command kind at one instance count.
type sequenceRun struct {
	e2e, acks, steps, baseline, floor []time.Duration
	statuses                          map[string]int
	// perStep are the durations of each step ("vigil-feed resume"), in ms.
	perStep map[string][]float64
}

// Sequence measures figure 2: pause and resume from request to result
// with 1 and then 3 instances of every service, each interleaved with the
// baseline, three sequential scatter-gathers over a trivial responder
// group of as many instances, and with the floor: the same scatter-gathers
// run by a process of its own between the durable writes the contract
// asks for (floorSequence).
func Sequence(ctx context.Context, env *Env, out *Output) error {
	cs, err := env.sharedStack(ctx)
	if err != nil {
		return err
	}
	if _, err := cs.benchAckStream(ctx); err != nil {
		return err
	}
	stopFloor, err := startFloor(ctx, cs.nc, cs.servers.NATSURL())
	if err != nil {
		return err
	}
	defer stopFloor()
	floorResults, err := cs.nc.SubscribeSync(floorResultSubject + ".*")
	if err != nil {
		return err
	}
	defer floorResults.Unsubscribe() //nolint:errcheck // best effort
	details := map[string]any{}
	for _, n := range []int{1, 3} {
		if cs.instances < n {
			env.Log.Info("sequence: starting more instances", "per_service", n)
			if _, err := cs.start(ctx, stackServices, cs.instances+1, n); err != nil {
				return err
			}
			cs.instances = n
			if err := cs.waitSteps(ctx, n); err != nil {
				return err
			}
		}
		group, err := startResponders(cs.servers.NATSURL(), n)
		if err != nil {
			return err
		}
		runs := map[contract.Command]*sequenceRun{}
		for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
			runs[cmd] = &sequenceRun{statuses: map[string]int{}, perStep: map[string][]float64{}}
		}
		env.Log.Info("sequence: pause and resume", "instances", n, "iterations", env.Opts.SequenceIterations)
		var profiled []*stack.Proc
		for _, svc := range []string{stack.Control, stack.Indicators} {
			profiled = append(profiled, cs.procs(svc)[0])
		}
		waitProfile := env.profile(ctx, fmt.Sprintf("sequence%d", n), profiled, 10*time.Second, out)
		for i := range env.Opts.SequenceIterations {
			user := cs.seqUsers[i%len(cs.seqUsers)]
			for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
				began := time.Now()
				for range 3 {
					if err := group.scatterGather(cs.nc); err != nil {
						group.close()
						return err
					}
				}
				base := time.Since(began)
				floor, err := runFloorSequence(cs.nc, floorResults, n)
				if err != nil {
					group.close()
					return err
				}
				sent := time.Now()
				ack, ackRTT, err := cs.cmd.send(ctx, user, cmd, nil)
				if err != nil {
					group.close()
					return err
				}
				res, arrived, err := cs.cmd.wait(ctx, ack.ID, time.Minute)
				if err != nil {
					group.close()
					return err
				}
				elapsed := arrived.Sub(sent)
				r := runs[cmd]
				r.acks = append(r.acks, ackRTT)
				r.statuses[resultStatus(res)]++
				r.e2e, r.baseline, r.floor = append(r.e2e, elapsed), append(r.baseline, base), append(r.floor, floor)
				r.steps = append(r.steps, time.Duration(stepsMs(res)*float64(time.Millisecond)))
				for _, st := range res.Steps {
					name := st.Service + " " + string(st.Verb)
					r.perStep[name] = append(r.perStep[name], st.Ms)
				}
			}
		}
		waitProfile()
		group.close()
		for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
			r := runs[cmd]
			row := report.Row{Number: 2, Figure: "sequence", Name: fmt.Sprintf("%s end to end, %d instance(s)/service", cmd, n), Unit: "ms",
				Value: report.Times(stats.Summarize(stats.Millis(r.e2e))), Target: "≤ 3×"}
			row.Compare(fmt.Sprintf("3 scatter-gathers over %d responders", n), report.Times(stats.Summarize(stats.Millis(r.baseline))), false)
			row.SetMet(row.Ratio != nil && row.Ratio.Median <= 3 && row.Ratio.Tail <= 3)
			stepSum := stats.Summarize(stats.Millis(r.steps))
			perStep := map[string]stats.Summary{}
			var medians []string
			for _, name := range slices.Sorted(maps.Keys(r.perStep)) {
				perStep[name] = stats.Summarize(r.perStep[name])
				medians = append(medians, fmt.Sprintf("%s %.1f", strings.TrimPrefix(name, "vigil-"), perStep[name].Median))
			}
			ackSum := stats.Summarize(stats.Millis(r.acks))
			row.Note = fmt.Sprintf("medians ms: ACK %.1f, steps %s (sum %.1f); results %s", ackSum.Median, strings.Join(medians, ", "), stepSum.Median, joinStatuses(r.statuses))
			floorSum := stats.Summarize(stats.Millis(r.floor))
			vsFloor := report.Row{Number: 2, Figure: "sequence", Name: fmt.Sprintf("%s end to end vs floor, %d instance(s)/service", cmd, n), Unit: "ms",
				Value: row.Value, Target: "reported",
				Note: fmt.Sprintf("floor: record, ACK, desired state, 3 scatter-gathers, result, run by a process of its own (%.2f ms = %.1f× the baseline); same run, interleaved",
					floorSum.Median, floorSum.Median/stats.Summarize(stats.Millis(r.baseline)).Median)}
			vsFloor.Compare("the contract's least: 3 publish-acks + 3 scatter-gathers from another process", report.Times(floorSum), false)
			out.add("", nil, row, vsFloor)
			details[fmt.Sprintf("%s_%d", cmd, n)] = map[string]any{"e2e_ms": stats.Summarize(stats.Millis(r.e2e)),
				"ack_ms": ackSum, "steps_ms": stepSum, "per_step_ms": perStep, "baseline_ms": stats.Summarize(stats.Millis(r.baseline)),
				"floor_ms": floorSum, "results": r.statuses}
		}
	}
	out.add("sequence", details)
	return env.Close()
}

// runFloorSequence sends one command to the floor responder, whose steps
// wait for n responders, and returns the time from the request to its
// result's arrival.
func runFloorSequence(nc *nats.Conn, results *nats.Subscription, n int) (time.Duration, error) {
	req := nats.NewMsg(floorSequenceSubject)
	req.Header.Set(floorRespondersHeader, strconv.Itoa(n))
	req.Data = ackReply
	began := time.Now()
	ack, err := nc.RequestMsg(req, 5*time.Second)
	if err != nil {
		return 0, fmt.Errorf("floor sequence: %w", err)
	}
	if string(ack.Data) != string(ackReply) {
		return 0, fmt.Errorf("%w: floor sequence: the responder's record failed: %s", ErrFigure, ack.Data)
	}
	res, err := results.NextMsg(15 * time.Second)
	if err != nil {
		return 0, fmt.Errorf("floor sequence: result: %w", err)
	}
	took := time.Since(began)
	if string(res.Data) != string(floorResultOK) {
		return 0, fmt.Errorf("%w: floor sequence: %s", ErrFigure, res.Data)
	}
	return took, nil
}

// resultStatus is "succeeded:<result status>" or "<status>:<error code>".
func resultStatus(r contract.Result) string {
	if r.Status != contract.StatusSucceeded {
		return string(r.Status) + ":" + errText(r.Error)
	}
	var body struct {
		Status string `json:"status"`
	}
	_ = json.Unmarshal(r.Result, &body)
	return string(r.Status) + ":" + body.Status
}

// waitSteps waits until a pause and a resume of a sequence user are
// confirmed by n instances of every service at every step: the new
// instances joined and control sees them.
func (cs *controlStack) waitSteps(ctx context.Context, n int) error {
	user := cs.seqUsers[0]
	return poll(ctx, 60*time.Second, fmt.Sprintf("steps confirmed by %d instances", n), func() (bool, error) {
		for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
			res, _, err := cs.cmd.run(ctx, user, cmd, nil, time.Minute)
			if err != nil {
				return false, err
			}
			if res.Status != contract.StatusSucceeded || len(res.Steps) != 3 {
				return false, nil
			}
			for _, s := range res.Steps {
				if s.Instances != n || s.Acked != n {
					return false, nil
				}
			}
		}
		return true, nil
	})
}

// joinStatuses renders a status count map in a stable order.
func joinStatuses(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
