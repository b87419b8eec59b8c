package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/pkg/testenv"
)

// cmdStack is a running vigil for the command tests: a testenv.Stack and
// the test's own clients of its JetStream, Redis and Postgres.
type cmdStack struct {
	*testenv.Stack
	js    jetstream.JetStream
	rdb   *redis.Client
	store *redisstore.Store
	pool  *pgxpool.Pool
	users *db.Users

	mu       sync.Mutex
	accounts map[string]account
}

// account is a seeded user: users.id and the default exchange account id.
type account struct {
	UserID, ExchangeID int64
}

// series is the user's series of symbol at tf.
func (a account) series(user, symbol string, tf contract.Timeframe) contract.SeriesID {
	return contract.SeriesID{User: user, UserID: a.UserID, ExchangeID: a.ExchangeID, Symbol: symbol, Timeframe: tf}
}

// newCmdStack starts the servers of a stack (no service yet) with env added
// to every process, and connects the test's clients.
func newCmdStack(t *testing.T, env ...string) *cmdStack {
	t.Helper()
	stack := testenv.NewStack(t)
	stack.Env = append(stack.Env, env...)
	return cmdStackOf(t, stack)
}

// cmdStackOf connects the test's clients to the servers of stack.
func cmdStackOf(t *testing.T, stack *testenv.Stack) *cmdStack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := db.NewPool(ctx, stack.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	opts, err := redis.ParseURL(stack.RedisURL)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	js, err := jetstream.New(stack.Conn())
	if err != nil {
		t.Fatal(err)
	}
	return &cmdStack{Stack: stack, js: js, rdb: rdb, store: redisstore.New(rdb, 0), pool: pool,
		users: db.NewUsers(pool), accounts: map[string]account{}}
}

// startAll starts n instances of every service (control last, so that it
// seeds the desired state of every user already in Postgres) and waits for
// the desired state of each of users.
func (s *cmdStack) startAll(t *testing.T, n int, users ...string) map[string][]*testenv.Proc {
	t.Helper()
	procs := map[string][]*testenv.Proc{}
	for _, svc := range services {
		short := strings.TrimPrefix(svc, "vigil-")
		for i := 1; i <= n; i++ {
			procs[svc] = append(procs[svc], s.Start(svc, fmt.Sprintf("%s-%d", short, i)))
		}
	}
	for _, user := range users {
		testenv.WaitFor(t, 30*time.Second, "the desired state of "+user, func() bool {
			_, _, ok := s.state(user)
			return ok
		})
	}
	return procs
}

// seed creates user with settings and a coinbase account (the default
// exchange account), plus an account on each of extraExchanges, whose ids
// it returns in that order.
func (s *cmdStack) seed(t *testing.T, user, settings string, extraExchanges ...string) (account, []int64) {
	t.Helper()
	if _, err := contract.ParseSettings([]byte(settings), contract.DefaultLimits); err != nil {
		t.Fatalf("settings of %s are invalid: %v", user, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	userID, _, err := s.users.SeedUser(ctx, "test", user, json.RawMessage(settings), "coinbase")
	if err != nil {
		t.Fatal(err)
	}
	var extra []int64
	for _, exchange := range extraExchanges {
		_, ex, err := s.users.SeedUser(ctx, "test", user, json.RawMessage(settings), exchange)
		if err != nil {
			t.Fatal(err)
		}
		extra = append(extra, ex)
	}
	def, err := s.users.DefaultExchangeAccount(ctx, userID)
	if err != nil {
		t.Fatal(err)
	}
	a := account{UserID: userID, ExchangeID: def}
	s.mu.Lock()
	s.accounts[user] = a
	s.mu.Unlock()
	return a, extra
}

// account is the seeded account of user.
func (s *cmdStack) account(t *testing.T, user string) account {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.accounts[user]
	if !ok {
		t.Fatalf("user %s was not seeded", user)
	}
	return a
}

// setSettings replaces users.settings of a seeded user (no validation: the
// tests also store invalid settings).
func (s *cmdStack) setSettings(t *testing.T, user, settings string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tag, err := s.pool.Exec(ctx, `UPDATE users SET settings = $1, updated_at = now() WHERE identity_sub = $2`, settings, user)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("update settings of %s: %v (%d rows)", user, err, tag.RowsAffected())
	}
}

// send sends command cmd of user with payload (a JSON string) and, unless
// msgID is empty, a Nats-Msg-Id header, and returns the ACK.
func (s *cmdStack) send(t *testing.T, user string, cmd contract.Command, payload, msgID string) contract.Ack {
	t.Helper()
	ack, err := s.trySend(user, cmd, payload, msgID)
	if err != nil {
		t.Fatal(err)
	}
	return ack
}

// trySend is send for any goroutine.
func (s *cmdStack) trySend(user string, cmd contract.Command, payload, msgID string) (contract.Ack, error) {
	msg := nats.NewMsg(contract.CommandSubject(user, cmd))
	msg.Data = []byte(payload)
	msg.Header.Set("Vigil-Operator", "e2e-commands")
	if msgID != "" {
		msg.Header.Set(nats.MsgIdHdr, msgID)
	}
	reply, err := s.Conn().RequestMsg(msg, 15*time.Second)
	if err != nil {
		return contract.Ack{}, fmt.Errorf("%s %s: %w", cmd, user, err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return contract.Ack{}, fmt.Errorf("%s %s: ACK %q: %w", cmd, user, reply.Data, err)
	}
	return ack, nil
}

// accept sends a command and fails the test unless it is accepted.
func (s *cmdStack) accept(t *testing.T, user string, cmd contract.Command, payload string) contract.Ack {
	t.Helper()
	ack := s.send(t, user, cmd, payload, "")
	if !ack.Accepted || ack.ID == "" {
		t.Fatalf("%s of %s %s was not accepted: %+v", cmd, user, payload, ackString(ack))
	}
	return ack
}

// run sends a command, waits for its result and fails the test unless it
// succeeded.
func (s *cmdStack) run(t *testing.T, user string, cmd contract.Command, payload string) contract.Result {
	t.Helper()
	ack := s.accept(t, user, cmd, payload)
	res := s.waitResult(t, user, ack.ID, 60*time.Second)
	if res.Status != contract.StatusSucceeded {
		t.Fatalf("%s of %s %s: %s", cmd, user, payload, resultString(res))
	}
	return res
}

// result reads the published result of command id of user, if any.
func (s *cmdStack) result(user, id string) (contract.Result, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	stream, err := s.js.Stream(ctx, contract.StreamResults)
	if err != nil {
		return contract.Result{}, false
	}
	msg, err := stream.GetLastMsgForSubject(ctx, contract.ResultSubject(user, id))
	if err != nil {
		return contract.Result{}, false
	}
	var r contract.Result
	return r, json.Unmarshal(msg.Data, &r) == nil
}

// waitResult waits for the result of command id of user.
func (s *cmdStack) waitResult(t *testing.T, user, id string, timeout time.Duration) contract.Result {
	t.Helper()
	var res contract.Result
	testenv.WaitFor(t, timeout, "the result of command "+id+" of "+user, func() bool {
		var ok bool
		res, ok = s.result(user, id)
		return ok
	})
	return res
}

// state reads user's desired state and the KV entry's revision.
func (s *cmdStack) state(user string) (contract.DesiredState, uint64, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := s.js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return contract.DesiredState{}, 0, false
	}
	e, err := kv.Get(ctx, contract.StateKey(user))
	if err != nil {
		return contract.DesiredState{}, 0, false
	}
	var st contract.DesiredState
	return st, e.Revision(), json.Unmarshal(e.Value(), &st) == nil
}

// stateEntry is user's raw KV entry: its revision and value.
func (s *cmdStack) stateEntry(t *testing.T, user string) (uint64, string) {
	t.Helper()
	e := s.kvEntry(t, contract.BucketState, contract.StateKey(user))
	if e == nil {
		t.Fatalf("desired state of %s: none", user)
	}
	return e.Revision(), string(e.Value())
}

// kvEntry is the entry of key in bucket, nil when there is none.
func (s *cmdStack) kvEntry(t *testing.T, bucket, key string) jetstream.KeyValueEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := s.js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("%s %s: %v", bucket, key, err)
	}
	return e
}

// lastSeq is the last sequence of stream now.
func (s *cmdStack) lastSeq(t *testing.T, stream string) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	return info.State.LastSeq
}

// published returns the messages of stream on subjects matching filter
// with a sequence above after, as stored now.
func (s *cmdStack) published(t *testing.T, stream, filter string, after uint64) []jetstream.Msg {
	t.Helper()
	msgs, err := s.tryPublished(stream, filter, after)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func (s *cmdStack) tryPublished(stream, filter string, after uint64) ([]jetstream.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cons, err := s.js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
		FilterSubjects: []string{natsx.StoredFilter(stream, filter)}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq: after + 1, AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 30 * time.Second,
		MemoryStorage: true,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer on %s %s: %w", stream, filter, err)
	}
	defer func() { _ = s.js.DeleteConsumer(context.Background(), stream, cons.CachedInfo().Name) }()
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("consumer on %s %s: %w", stream, filter, err)
	}
	var out []jetstream.Msg
	for want := int(info.NumPending); len(out) < want; {
		batch, err := cons.Fetch(min(want-len(out), 500), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("fetch %s %s: %w", stream, filter, err)
		}
		n := len(out)
		for m := range batch.Messages() {
			out = append(out, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("fetch %s %s: %w", stream, filter, err)
		}
		if len(out) == n {
			return nil, fmt.Errorf("fetch %s %s: %d of %d pending messages arrived", stream, filter, n, want)
		}
	}
	return out, nil
}

// count is how many messages of stream on filter have a sequence above after.
func (s *cmdStack) count(t *testing.T, stream, filter string, after uint64) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cons, err := s.js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
		FilterSubjects: []string{natsx.StoredFilter(stream, filter)}, DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq: after + 1, AckPolicy: jetstream.AckNonePolicy, InactiveThreshold: 30 * time.Second,
		MemoryStorage: true,
	})
	if err != nil {
		t.Fatalf("consumer on %s %s: %v", stream, filter, err)
	}
	defer func() { _ = s.js.DeleteConsumer(context.Background(), stream, cons.CachedInfo().Name) }()
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatalf("consumer on %s %s: %v", stream, filter, err)
	}
	return int(info.NumPending)
}

// lastCandle is the newest stored candle of a series (Start 0 when none).
func (s *cmdStack) lastCandle(t *testing.T, series contract.SeriesID) contract.Candle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, _, err := s.store.LastCandle(ctx, series)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// candles are the stored candles of a series, oldest first.
func (s *cmdStack) candles(t *testing.T, series contract.SeriesID) []contract.Candle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cs, err := s.store.Candles(ctx, series, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// indicator are the stored points of an indicator series, oldest first.
func (s *cmdStack) indicator(t *testing.T, series contract.SeriesID, name string) []redisstore.IndicatorPoint {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ps, err := s.store.Indicator(ctx, series, name, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// keys lists the keys matching pattern (SCAN), sorted.
func (s *cmdStack) keys(t *testing.T, pattern string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []string
	iter := s.rdb.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		out = append(out, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// snapshot is the serialized value (DUMP) of every key matching one of
// patterns and of every key named in exact that exists.
func (s *cmdStack) snapshot(t *testing.T, patterns []string, exact ...string) map[string]string {
	t.Helper()
	names := slices.Clone(exact)
	for _, p := range patterns {
		names = append(names, s.keys(t, p)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := map[string]string{}
	for _, k := range names {
		v, err := s.rdb.Dump(ctx, k).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out[k] = v
	}
	return out
}

// diffSnapshots describes how after differs from before ("" when equal).
func diffSnapshots(before, after map[string]string) string {
	var d []string
	for k, v := range before {
		w, ok := after[k]
		switch {
		case !ok:
			d = append(d, "deleted "+k)
		case v != w:
			d = append(d, "changed "+k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			d = append(d, "created "+k)
		}
	}
	slices.Sort(d)
	return strings.Join(d, ", ")
}

// svcStatus asks every instance of a service for its status (body is the
// request, "" for none) and returns the replies of want instances, or what
// came within 5 s.
func (s *cmdStack) svcStatus(t *testing.T, svc string, body string, want int) []contract.SvcReply {
	t.Helper()
	out, err := testenv.CallVerb(s.Conn(), contract.Svc(svc), contract.VerbStatus, []byte(body), want, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// userStatus decodes users.<user> of an instance's status reply into v
// and reports whether the instance has an entry for user.
func userStatus(r contract.SvcReply, user string, v any) bool {
	var st struct {
		Users map[string]json.RawMessage `json:"users"`
	}
	if json.Unmarshal(r.Result, &st) != nil {
		return false
	}
	raw, ok := st.Users[user]
	return ok && json.Unmarshal(raw, v) == nil
}

// commandRow is a command_log row's timings.
type commandRow struct {
	ID, Command, Status, Instance string
	Accepted                      time.Time
	Started, Finished             *time.Time
	Attempts                      int
}

// commandRows reads the command_log rows of user, in acceptance order.
func (s *cmdStack) commandRows(t *testing.T, user string) []commandRow {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := s.pool.Query(ctx, `SELECT id, command, status, coalesce(control_instance, ''), accepted_at, started_at, finished_at, attempts
		FROM command_log WHERE user_token = $1 ORDER BY seq`, user)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []commandRow
	for rows.Next() {
		var r commandRow
		if err := rows.Scan(&r.ID, &r.Command, &r.Status, &r.Instance, &r.Accepted, &r.Started, &r.Finished, &r.Attempts); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// finalRows waits until the projector wrote the final rows of ids, then
// returns the command_log rows of user.
func (s *cmdStack) finalRows(t *testing.T, user string, ids ...string) []commandRow {
	t.Helper()
	var rows []commandRow
	testenv.WaitFor(t, 30*time.Second, "the final command_log rows of "+strings.Join(ids, ", "), func() bool {
		rows = s.commandRows(t, user)
		final := 0
		for _, r := range rows {
			if slices.Contains(ids, r.ID) && r.Finished != nil {
				final++
			}
		}
		return final == len(ids)
	})
	return rows
}

// queueStates reads user's queue from VIGIL_QUEUE: the state of each
// unsettled command (accepted, running, or its final status).
func (s *cmdStack) queueStates(t *testing.T, user string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := s.js.KeyValue(ctx, natsx.BucketQueue)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, contract.StateKey(user))
	if err != nil {
		t.Fatal(err)
	}
	// The parts of control's queue record (its ledger.Queue) the state
	// of an item follows from, read from outside as an operator would.
	var q struct {
		Items []struct {
			ID       string `json:"id"`
			Instance string `json:"instance"`
			Ended    *struct {
				Status string `json:"status"`
			} `json:"ended"`
		} `json:"items"`
	}
	if err := json.Unmarshal(e.Value(), &q); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, it := range q.Items {
		switch {
		case it.Ended != nil:
			out[it.ID] = it.Ended.Status
		case it.Instance != "":
			out[it.ID] = "running"
		default:
			out[it.ID] = "accepted"
		}
	}
	return out
}

// resultAs decodes a result's result object into its type in
// pkg/contract, strictly: a member the type does not know fails the test.
func resultAs[T any](t *testing.T, res contract.Result) T {
	t.Helper()
	v, err := contract.DecodeStrict[T](res.Result)
	if err != nil {
		t.Fatalf("result of %s %s: %v: %s", res.Command, res.ID, err, res.Result)
	}
	return v
}

// checkSteps fails the test unless the result's steps are exactly want
// ("vigil-alerts pause", ...) in order, each confirmed by every one of
// instances instances (0: at least one).
func checkSteps(t *testing.T, res contract.Result, instances int, want ...string) {
	t.Helper()
	var got []string
	for _, st := range res.Steps {
		got = append(got, st.Service+" "+string(st.Verb))
		if st.Acked != st.Instances || st.Instances == 0 || (instances > 0 && st.Instances != instances) || len(st.Missing) > 0 || st.Error != nil {
			t.Errorf("%s step %s %s: instances=%d acked=%d missing=%v error=%v, want %d of %d confirmed",
				res.Command, st.Service, st.Verb, st.Instances, st.Acked, st.Missing, st.Error, max(instances, 1), max(instances, 1))
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s steps %q, want %q", res.Command, got, want)
	}
}

// consecutive returns the first gap among candles (sorted by start) of
// timeframe tf, as "a → b", or "".
func consecutive(cs []contract.Candle, tf contract.Timeframe) string {
	step := int64(tf.Duration() / time.Second)
	for i := 1; i < len(cs); i++ {
		if cs[i].Start-cs[i-1].Start != step {
			return fmt.Sprintf("%s → %s", cs[i-1].StartTime().Format(time.RFC3339), cs[i].StartTime().Format(time.RFC3339))
		}
	}
	return ""
}

// since keeps the candles starting at or after from.
func since(cs []contract.Candle, from int64) []contract.Candle {
	i, _ := slices.BinarySearchFunc(cs, from, func(c contract.Candle, from int64) int {
		return int(c.Start - from)
	})
	return cs[i:]
}

func ackString(a contract.Ack) string {
	b, _ := json.Marshal(a)
	return string(b)
}

func resultString(r contract.Result) string {
	b, _ := json.Marshal(r)
	return string(b)
}

// redisZ is a sorted-set member for a key the tests plant.
func redisZ(key string) redis.Z { return redis.Z{Score: 1, Member: "planted " + key} }

// itoa formats an id for keys.
func itoa(n int64) string { return strconv.FormatInt(n, 10) }
