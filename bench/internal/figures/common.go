package figures

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"vigil.dev/bench/internal/stack"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/natsx"
)

// benchStack is one figure's servers, service processes and the runner's
// connections to them.
type benchStack struct {
	servers  *stack.Servers
	launcher *stack.Launcher
	nc       *nats.Conn
	js       jetstream.JetStream
	pool     *pgxpool.Pool
	users    *db.Users
}

// newStack starts fresh servers in a directory named after the figure,
// creates the streams and connects to them.
func (e *Env) newStack(ctx context.Context, name string) (s *benchStack, err error) {
	dir, err := os.MkdirTemp(e.Work, name+"-")
	if err != nil {
		return nil, err
	}
	servers, err := stack.StartServers(ctx, dir)
	if err != nil {
		return nil, err
	}
	s = &benchStack{servers: servers}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
		}
	}()
	if s.nc, err = nats.Connect(servers.NATSURL(), nats.Name("vigil-bench")); err != nil {
		return nil, fmt.Errorf("connect %s: %w", servers.NATSURL(), err)
	}
	if s.js, err = jetstream.New(s.nc); err != nil {
		return nil, err
	}
	if err = natsx.EnsureStreams(ctx, s.js); err != nil {
		return nil, err
	}
	if s.pool, err = db.NewPool(ctx, servers.DatabaseURL()); err != nil {
		return nil, err
	}
	s.users = db.NewUsers(s.pool)
	s.launcher = stack.NewLauncher(e.Bins, servers, s.nc)
	return s, nil
}

// Close stops the services, then the servers.
func (s *benchStack) Close() error {
	var errs []error
	if s.launcher != nil {
		errs = append(errs, s.launcher.StopAll())
	}
	if s.pool != nil {
		s.pool.Close()
	}
	if s.nc != nil {
		s.nc.Close()
	}
	errs = append(errs, s.servers.Stop())
	return errors.Join(errs...)
}

// start starts instances 1..n of each service (named <service>-<i>),
// with env added to every one.
func (s *benchStack) start(ctx context.Context, services []string, from, to int, env ...string) ([]*stack.Proc, error) {
	var procs []*stack.Proc
	for _, svc := range services {
		for i := from; i <= to; i++ {
			p, err := s.launcher.Start(ctx, svc, svc+"-"+strconv.Itoa(i), env...)
			if err != nil {
				return procs, err
			}
			procs = append(procs, p)
		}
	}
	return procs, nil
}

// account is a seeded user's ids.
type account struct {
	Token      string
	UserID     int64
	ExchangeID int64
	Settings   contract.Settings
}

// seed creates the users with their settings (pkg/db SeedUser, provider
// "bench", exchange "coinbase").
func (s *benchStack) seed(ctx context.Context, tokens []string, settings func(i int) contract.Settings) ([]account, error) {
	out := make([]account, len(tokens))
	for i, token := range tokens {
		st := settings(i)
		if err := st.Validate(contract.DefaultLimits); err != nil {
			return nil, fmt.Errorf("settings of %s: %w", token, err)
		}
		doc, err := json.Marshal(st)
		if err != nil {
			return nil, err
		}
		uid, ex, err := s.users.SeedUser(ctx, "bench", token, doc, "coinbase")
		if err != nil {
			return nil, err
		}
		out[i] = account{Token: token, UserID: uid, ExchangeID: ex, Settings: st}
	}
	return out, nil
}

// waitStates waits until every token has a desired state in VIGIL_STATE
// (vigil-control seeds them at start).
func (s *benchStack) waitStates(ctx context.Context, tokens []string) error {
	kv, err := s.js.KeyValue(ctx, contract.BucketState)
	if err != nil {
		return err
	}
	for _, t := range tokens {
		err := poll(ctx, 60*time.Second, "desired state of "+t, func() (bool, error) {
			_, err := kv.Get(ctx, contract.StateKey(t))
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return false, nil
			}
			return err == nil, err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// poll calls cond every 50 ms until it is true, fails, or timeout passes.
func poll(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: timed out after %s waiting for %s", ErrFigure, timeout, what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// statuses asks every instance of svc for its status (vigil.svc.<svc>.status)
// and returns the results of the n answers it waits for (or what came
// within a second).
func statuses[T any](nc *nats.Conn, svc contract.Svc, n int) ([]T, error) {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe() //nolint:errcheck // best effort
	if err := nc.PublishRequest(contract.SvcSubject(svc, contract.VerbStatus), inbox, []byte("{}")); err != nil {
		return nil, err
	}
	var out []T
	deadline := time.Now().Add(time.Second)
	for len(out) < n {
		msg, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var reply contract.SvcReply
		var st T
		if json.Unmarshal(msg.Data, &reply) == nil && reply.OK && json.Unmarshal(reply.Result, &st) == nil {
			out = append(out, st)
		}
	}
	return out, nil
}

// commander sends operator commands and collects their results from
// vigil.result.> as they arrive.
type commander struct {
	nc     *nats.Conn
	sub    *nats.Subscription
	prefix string
	seq    atomic.Int64

	mu      sync.Mutex
	results map[string]arrived
	waiters map[string]chan arrived
}

// arrived is a result and when the runner received it.
type arrived struct {
	result contract.Result
	at     time.Time
}

func newCommander(nc *nats.Conn) (*commander, error) {
	c := &commander{nc: nc, prefix: "b" + strconv.FormatInt(time.Now().UnixNano()%1e12, 36),
		results: map[string]arrived{}, waiters: map[string]chan arrived{}}
	sub, err := nc.Subscribe(contract.ResultSubjects, func(m *nats.Msg) {
		at := time.Now()
		var r contract.Result
		if json.Unmarshal(m.Data, &r) != nil || r.ID == "" {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if w, ok := c.waiters[r.ID]; ok {
			w <- arrived{r, at}
			delete(c.waiters, r.ID)
			return
		}
		c.results[r.ID] = arrived{r, at}
	})
	if err != nil {
		return nil, err
	}
	c.sub = sub
	return c, nc.Flush()
}

func (c *commander) close() { _ = c.sub.Unsubscribe() }

// nextID is a fresh command id (used as Nats-Msg-Id).
func (c *commander) nextID() string {
	return c.prefix + "-" + strconv.FormatInt(c.seq.Add(1), 10)
}

// send requests cmd for user with payload (nil: empty) and returns its ACK
// and the request's round trip. A rejected command is an error.
func (c *commander) send(ctx context.Context, user string, cmd contract.Command, payload any) (contract.Ack, time.Duration, error) {
	msg := nats.NewMsg(contract.CommandSubject(user, cmd))
	msg.Header.Set("Nats-Msg-Id", c.nextID())
	if payload != nil {
		b, err := json.Marshal(payload)
		if err != nil {
			return contract.Ack{}, 0, err
		}
		msg.Data = b
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	began := time.Now()
	reply, err := c.nc.RequestMsgWithContext(ctx, msg)
	rtt := time.Since(began)
	if err != nil {
		return contract.Ack{}, rtt, fmt.Errorf("%s %s: %w", cmd, user, err)
	}
	var ack contract.Ack
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return ack, rtt, fmt.Errorf("%s %s: ack %q: %w", cmd, user, reply.Data, err)
	}
	if !ack.Accepted {
		return ack, rtt, fmt.Errorf("%w: %s %s rejected: %+v", ErrFigure, cmd, user, ack.Error)
	}
	return ack, rtt, nil
}

// wait returns the result of command id and when it arrived.
func (c *commander) wait(ctx context.Context, id string, timeout time.Duration) (contract.Result, time.Time, error) {
	c.mu.Lock()
	if a, ok := c.results[id]; ok {
		delete(c.results, id)
		c.mu.Unlock()
		return a.result, a.at, nil
	}
	ch := make(chan arrived, 1)
	c.waiters[id] = ch
	c.mu.Unlock()
	select {
	case a := <-ch:
		return a.result, a.at, nil
	case <-time.After(timeout):
	case <-ctx.Done():
	}
	c.mu.Lock()
	delete(c.waiters, id)
	c.mu.Unlock()
	return contract.Result{}, time.Time{}, fmt.Errorf("%w: no result of command %s within %s", ErrFigure, id, timeout)
}

// run sends cmd and waits for its result; elapsed is from the request to
// the result's arrival.
func (c *commander) run(ctx context.Context, user string, cmd contract.Command, payload any, timeout time.Duration) (contract.Result, time.Duration, error) {
	began := time.Now()
	ack, _, err := c.send(ctx, user, cmd, payload)
	if err != nil {
		return contract.Result{}, 0, err
	}
	res, at, err := c.wait(ctx, ack.ID, timeout)
	return res, at.Sub(began), err
}

// stepsMs is the sum of a result's step durations.
func stepsMs(r contract.Result) float64 {
	sum := 0.0
	for _, s := range r.Steps {
		sum += s.Ms
	}
	return sum
}

// logDir is where a stack's service logs are, for error messages.
func (s *benchStack) logDir() string { return filepath.Join(s.servers.Dir, "logs") }
