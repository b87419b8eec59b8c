// Package redisstore is vigil's Redis layer: the go-redis client (traced and
// measured with redisotel), the versioned add-if-newer writes of candle and
// indicator series, their reads, and clear-cache's SCAN + UNLINK deletion.
//
// A series is a sorted set scored by bar start (UNIX seconds) whose members
// are JSON documents carrying a "version". A write replaces the member of
// its bar only when its version is higher, atomically in a Lua script, and
// trims the set to the configured retention.
package redisstore

import (
	"context"
	"crypto/tls"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/wait"
)

// DefaultRetention is the number of bars kept per series by default.
const DefaultRetention = 1000

// NewClient opens a Redis client from url with tracing and metrics, and
// checks it with PING. It is Open without TLS files (a rediss:// url is
// verified with the system's roots).
func NewClient(ctx context.Context, url string) (*redis.Client, error) {
	return Open(ctx, config.Redis{URL: url})
}

// Open opens a Redis client from cfg (REDIS_URL and its TLS files) with
// tracing and metrics, and checks it with PING.
//
// A URL with a master_name query parameter names Redis Sentinels rather
// than a server, in go-redis's failover URL form:
//
//	redis://[user:pass@]sentinel1:26379/0?master_name=vigil&addr=sentinel2:26379&addr=sentinel3:26379&password=<master password>
//
// (userinfo is the sentinels' credential, the password parameter the
// master's). The client then asks the sentinels for the master and
// follows it through failovers.
//
// With rediss:// every connection (to a server, a sentinel or the master
// it names) is TLS; REDIS_CA verifies the servers' certificates for the
// URL's host, REDIS_CERT and REDIS_KEY are the client's certificate. The
// files are read on every handshake, so a new connection uses replaced
// files.
func Open(ctx context.Context, cfg config.Redis) (*redis.Client, error) {
	rdb, err := newClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL %s: %w", config.MaskURL(cfg.URL), err)
	}
	if err := errors.Join(redisotel.InstrumentTracing(rdb), redisotel.InstrumentMetrics(rdb)); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis instrumentation: %w", err)
	}
	if err := rdb.Ping(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis ping %s: %w", config.MaskURL(cfg.URL), err)
	}
	return rdb, nil
}

// newClient builds a plain or, for a sentinel URL, a failover client.
func newClient(cfg config.Redis) (*redis.Client, error) {
	if config.IsSentinelURL(cfg.URL) {
		opts, err := redis.ParseFailoverURL(cfg.URL)
		if err != nil {
			return nil, err
		}
		opts.TLSConfig = withFiles(opts.TLSConfig, cfg)
		opts.Dialer = failoverDialer(opts.DialTimeout, opts.TLSConfig, opts.SentinelAddrs)
		return redis.NewFailoverClient(opts), nil
	}
	opts, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	opts.TLSConfig = withFiles(opts.TLSConfig, cfg)
	return redis.NewClient(opts), nil
}

// failoverDialer connects to the sentinels and to the master they name
// within a third of dialTimeout (go-redis's dial timeout; its default
// when zero), with TLS when tc is set (as go-redis's own dialer does).
//
// go-redis asks the sentinel it last used for the master inside each new
// connection's dial, bounded by the dial timeout, and keeps that sentinel
// when the dial's deadline ends before the sentinel's own connection
// fails: a client whose sentinel died with its host failed every dial
// the same way, and reached the new master 10-18 s after the other
// clients (docs/deploy.md). A connection attempt that fails by itself
// within a third of the deadline leaves the dial time to drop the dead
// sentinel and ask the others.
//
// go-redis also asks every sentinel at once and keeps the first that
// answers, and learns of a failover (and drops its connections to the old
// master) only from that sentinel: a client that kept the sentinel on the
// master's host, which answers quickest, heard nothing when that host
// died and kept using the dead master's connections 10-15 s after the
// failover. So connections to any sentinel but the first listed (the
// URL's host: the sentinel on the client's own host, docs/deploy.md) wait
// sentinelPreference first, and the first one is kept whenever it answers.
func failoverDialer(dialTimeout time.Duration, tc *tls.Config, sentinels []string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if dialTimeout <= 0 {
		dialTimeout = defaultDialTimeout
	}
	nd := &net.Dialer{Timeout: dialTimeout / 3, KeepAlive: 5 * time.Minute}
	dial := nd.DialContext
	if tc != nil {
		dial = (&tls.Dialer{NetDialer: nd, Config: tc}).DialContext
	}
	var others []string
	if len(sentinels) > 1 {
		others = sentinels[1:]
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if slices.Contains(others, addr) && !wait.Sleep(ctx, sentinelPreference) {
			return nil, ctx.Err()
		}
		return dial(ctx, network, addr)
	}
}

// sentinelPreference is how long a connection to a sentinel other than the
// first listed waits, so that the first wins go-redis's race when it is up.
const sentinelPreference = 200 * time.Millisecond

// defaultDialTimeout is go-redis's dial timeout when the URL sets none.
const defaultDialTimeout = 5 * time.Second

// withFiles replaces the TLS configuration go-redis made for a rediss://
// URL (nil for redis://) by one reading cfg's TLS files, for the same
// server name.
func withFiles(parsed *tls.Config, cfg config.Redis) *tls.Config {
	files := cfg.TLSFiles()
	if parsed == nil || !files.Any() {
		return parsed
	}
	tc := files.Config(parsed.ServerName)
	if parsed.InsecureSkipVerify {
		// skip_verify=true in the URL: the operator asked for no check.
		tc.VerifyConnection = nil
	}
	return tc
}

//go:embed upsert.lua
var upsertSource string

// upsertScript writes a versioned member: KEYS[1] the series, ARGV score,
// version, member, retention. It returns 1 when written, 0 when the stored
// version is the same or newer.
var upsertScript = redis.NewScript(upsertSource)

//go:embed indicators.lua
var indicatorsSource string

// indicatorsScript writes one bar of several indicator series, each key
// with upsertScript's semantics, checked against a fence: KEYS the series
// (then the fence key when fenced), ARGV score, version, retention, epoch
// (0: not fenced), then one member per series key. It returns how many
// keys it wrote, or -1 when the fence refused the write.
var indicatorsScript = redis.NewScript(indicatorsSource)

// Store reads and writes series in Redis.
type Store struct {
	rdb       redis.UniversalClient
	retention int
}

// New returns a store keeping retention bars per series (DefaultRetention
// when retention <= 0).
func New(rdb redis.UniversalClient, retention int) *Store {
	if retention <= 0 {
		retention = DefaultRetention
	}
	return &Store{rdb: rdb, retention: retention}
}

// Client is the underlying Redis client.
func (s *Store) Client() redis.UniversalClient { return s.rdb }

// WriteCandle stores c if it is newer than the stored version of its bar and
// reports whether it was written. Invalid candles are rejected unwritten.
func (s *Store) WriteCandle(ctx context.Context, c contract.Candle) (bool, error) {
	if err := c.Validate(); err != nil {
		return false, err
	}
	return s.upsert(ctx, contract.CandleKey(c.SeriesID), c.Start, c.Version, c)
}

// WriteCandles stores many candles in pipelines of PipelineChunk and returns how many were
// written (newer than what was stored).
func (s *Store) WriteCandles(ctx context.Context, cs []contract.Candle) (int, error) {
	each, err := s.WriteCandlesEach(ctx, cs)
	written := 0
	for _, ok := range each {
		if ok {
			written++
		}
	}
	return written, err
}

func (s *Store) upsert(ctx context.Context, key string, start, version int64, v any) (bool, error) {
	member, err := json.Marshal(v)
	if err != nil {
		return false, err
	}
	n, err := upsertScript.Run(ctx, s.rdb, []string{key}, start, version, member, s.retention).Int()
	if err != nil {
		return false, fmt.Errorf("write %s: %w", key, err)
	}
	return n == 1, nil
}

// Candles returns the stored candles of series with start in [from, to]
// (UNIX seconds, inclusive), oldest first; to <= 0 means no upper bound.
func (s *Store) Candles(ctx context.Context, series contract.SeriesID, from, to int64) ([]contract.Candle, error) {
	return readRange[contract.Candle](ctx, s.rdb, contract.CandleKey(series), from, to)
}

// CountCandles is how many candles of series are stored with start in
// [from, to] (UNIX seconds, inclusive).
func (s *Store) CountCandles(ctx context.Context, series contract.SeriesID, from, to int64) (int64, error) {
	n, err := s.rdb.ZCount(ctx, contract.CandleKey(series), strconv.FormatInt(from, 10), strconv.FormatInt(to, 10)).Result()
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", contract.CandleKey(series), err)
	}
	return n, nil
}

// LastCandle is the newest stored candle of series; ok is false when there
// is none.
func (s *Store) LastCandle(ctx context.Context, series contract.SeriesID) (c contract.Candle, ok bool, err error) {
	members, err := s.rdb.ZRevRange(ctx, contract.CandleKey(series), 0, 0).Result()
	if err != nil || len(members) == 0 {
		return c, false, err
	}
	return c, true, json.Unmarshal([]byte(members[0]), &c)
}

// IndicatorPoint is one stored indicator value at one bar.
type IndicatorPoint struct {
	Start   int64           `json:"start"`
	Version int64           `json:"version"`
	Closed  bool            `json:"closed"`
	Fields  contract.Fields `json:"fields"`
}

// WriteIndicator stores p in the indicator series name of series if it is
// newer than the stored point of its bar.
func (s *Store) WriteIndicator(ctx context.Context, series contract.SeriesID, name string, p IndicatorPoint) (bool, error) {
	if err := contract.ValidateIndicatorName(name); err != nil {
		return false, err
	}
	return s.upsert(ctx, contract.IndicatorKey(series, name), p.Start, p.Version, p)
}

// WriteIndicators stores the values of one update (all indicators of one
// bar) in one pipeline.
func (s *Store) WriteIndicators(ctx context.Context, u contract.IndicatorUpdate) error {
	return s.WriteIndicatorUpdates(ctx, []contract.IndicatorUpdate{u})
}

// WriteIndicatorUpdates stores the values of many updates (of any series,
// in order) in pipelines of PipelineChunk, each versioned like WriteIndicators: one
// script call per update writes every indicator key of its bar. Every
// indicator name is validated before anything is written.
func (s *Store) WriteIndicatorUpdates(ctx context.Context, ups []contract.IndicatorUpdate) error {
	return s.WriteIndicatorUpdatesFenced(ctx, ups, nil)
}

// A Fence is a writer's right to write the series of one partition: the
// Redis key of the partition's fence (FenceKey) and the ownership epoch
// the writer took when it gained the partition (NewEpoch). A write
// carrying a Fence is refused when the fence has seen a newer epoch: a
// former owner that is dead or cut off cannot replace the values of the
// owner that took the partition after it.
type Fence struct {
	Key   string
	Epoch int64
}

// ErrFenced reports writes refused by their fence (errors.Is matches a
// *FencedError).
var ErrFenced = errors.New("fenced: a newer owner took the partition")

// FencedError lists the series whose updates a fence refused; the other
// updates of the same call were written.
type FencedError struct {
	Series []contract.SeriesID
}

// Error says how many series were refused and names the first.
func (e *FencedError) Error() string {
	return fmt.Sprintf("%v: %d series refused, e.g. %s", ErrFenced, len(e.Series), e.Series[0])
}

// Is makes errors.Is(err, ErrFenced) true.
func (e *FencedError) Is(target error) bool { return target == ErrFenced }

// FenceKey is the Redis key of the fence of partition k of a service's
// partitioned stream: fence:{service}:{k}. It holds the newest ownership
// epoch taken or written with.
func FenceKey(service string, k int) string {
	return "fence:" + service + ":" + strconv.Itoa(k)
}

// NewEpoch takes the next ownership epoch of a fence (INCR): from then on
// the fence refuses writes that carry an older epoch.
func (s *Store) NewEpoch(ctx context.Context, fenceKey string) (int64, error) {
	epoch, err := s.rdb.Incr(ctx, fenceKey).Result()
	if err != nil {
		return 0, fmt.Errorf("new epoch of %s: %w", fenceKey, err)
	}
	return epoch, nil
}

// WriteIndicatorUpdatesFenced is WriteIndicatorUpdates where each update
// is written only if fence(its series) allows it, checked in the same
// script call as the write: a fence that has seen a newer epoch refuses
// the whole update, and so does a Fence with a key but no epoch (the
// writer does not own the partition). Refused updates are reported as a
// *FencedError once the others are written. A nil fence, or a Fence
// without a key, writes unfenced.
func (s *Store) WriteIndicatorUpdatesFenced(ctx context.Context, ups []contract.IndicatorUpdate, fence func(contract.SeriesID) Fence) error {
	for _, u := range ups {
		for name := range u.Values {
			if err := contract.ValidateIndicatorName(name); err != nil {
				return err
			}
		}
	}
	refused := &FencedError{}
	for chunk := range slices.Chunk(ups, PipelineChunk) {
		if err := s.writeIndicatorChunk(ctx, chunk, fence, refused); err != nil {
			return err
		}
	}
	if len(refused.Series) > 0 {
		return refused
	}
	return nil
}

// writeIndicatorChunk writes one chunk of WriteIndicatorUpdatesFenced's
// updates in one pipeline and adds the series the fences refused to
// refused.
func (s *Store) writeIndicatorChunk(ctx context.Context, ups []contract.IndicatorUpdate, fence func(contract.SeriesID) Fence, refused *FencedError) error {
	calls := make([]scriptCall, 0, len(ups))
	series := make([]contract.SeriesID, 0, len(ups))
	for _, u := range ups {
		if len(u.Values) == 0 {
			continue
		}
		var f Fence
		if fence != nil {
			f = fence(u.SeriesID)
		}
		if f.Key != "" && f.Epoch <= 0 {
			refused.add(u.SeriesID)
			continue
		}
		call, err := s.indicatorCall(u, f)
		if err != nil {
			return err
		}
		calls = append(calls, call)
		series = append(series, u.SeriesID)
	}
	if len(calls) == 0 {
		return nil
	}
	cmds, err := runPipelined(ctx, s.rdb, indicatorsScript, calls)
	if err != nil {
		return err
	}
	for i, cmd := range cmds {
		if n, _ := cmd.Int64(); n < 0 {
			refused.add(series[i])
		}
	}
	return nil
}

// add lists id once.
func (e *FencedError) add(id contract.SeriesID) {
	if !slices.Contains(e.Series, id) {
		e.Series = append(e.Series, id)
	}
}

// indicatorCall is the indicatorsScript call of update u under fence f
// (unfenced without a key); it validates every indicator name.
func (s *Store) indicatorCall(u contract.IndicatorUpdate, f Fence) (scriptCall, error) {
	call := scriptCall{keys: make([]string, 0, len(u.Values)+1), args: make([]any, 4, 4+len(u.Values))}
	call.args[0], call.args[1], call.args[2], call.args[3] = u.Start, u.Version, s.retention, int64(0)
	if f.Key != "" {
		call.args[3] = f.Epoch
	}
	for name, fields := range u.Values {
		if err := contract.ValidateIndicatorName(name); err != nil {
			return call, err
		}
		member, err := json.Marshal(IndicatorPoint{Start: u.Start, Version: u.Version, Closed: u.Closed, Fields: fields})
		if err != nil {
			return call, err
		}
		call.keys = append(call.keys, contract.IndicatorKey(u.SeriesID, name))
		call.args = append(call.args, member)
	}
	if f.Key != "" {
		call.keys = append(call.keys, f.Key)
	}
	return call, nil
}

// scriptCall is the keys and arguments of one script call.
type scriptCall struct {
	keys []string
	args []any
}

// upsertMany runs upsertScript for every write in pipelines of PipelineChunk (runPipelined).
func (s *Store) upsertMany(ctx context.Context, writes []upsertArgs) ([]*redis.Cmd, error) {
	calls := make([]scriptCall, len(writes))
	for i, w := range writes {
		calls[i] = scriptCall{keys: []string{w.key}, args: []any{w.start, w.version, w.member, s.retention}}
	}
	return runPipelined(ctx, s.rdb, upsertScript, calls)
}

// upsertArgs are one versioned write of upsertScript.
type upsertArgs struct {
	key            string
	start, version int64
	member         []byte
}

// PipelineChunk is the most script calls one pipeline carries: a larger
// write (a rebuild of a long series, a backfill) is sent as several
// pipelines, one after the other, so that Redis, which runs one client's
// pipelined calls back to back, serves other clients' commands between
// them, and neither side holds the replies of the whole write at once.
const PipelineChunk = 256

// runPipelined runs script once per call, in pipelines of at most
// PipelineChunk calls, by its SHA, and stops between pipelines when ctx
// ends. Only when Redis does not know the script (first use, or after a
// restart or SCRIPT FLUSH) does it load it and run that pipeline again,
// which is harmless: the writes are idempotent.
func runPipelined(ctx context.Context, rdb redis.UniversalClient, script *redis.Script, calls []scriptCall) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, 0, len(calls))
	for chunk := range slices.Chunk(calls, PipelineChunk) {
		if err := ctx.Err(); err != nil {
			return cmds, err
		}
		done, err := runPipeline(ctx, rdb, script, chunk)
		cmds = append(cmds, done...)
		if err != nil {
			return cmds, err
		}
	}
	return cmds, nil
}

// runPipeline runs script once per call in one pipeline (runPipelined).
func runPipeline(ctx context.Context, rdb redis.UniversalClient, script *redis.Script, calls []scriptCall) ([]*redis.Cmd, error) {
	run := func() ([]*redis.Cmd, error) {
		pipe := rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(calls))
		for i, c := range calls {
			cmds[i] = script.EvalSha(ctx, pipe, c.keys, c.args...)
		}
		_, err := pipe.Exec(ctx)
		return cmds, err
	}
	cmds, err := run()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		if err := script.Load(ctx, rdb).Err(); err != nil {
			return nil, err
		}
		cmds, err = run()
	}
	return cmds, err
}

// Indicator returns the stored points of one indicator series with start in
// [from, to], oldest first; to <= 0 means no upper bound.
func (s *Store) Indicator(ctx context.Context, series contract.SeriesID, name string, from, to int64) ([]IndicatorPoint, error) {
	return readRange[IndicatorPoint](ctx, s.rdb, contract.IndicatorKey(series, name), from, to)
}

// ReadChunk is the most members one read of a range returns: a longer
// range is read in several ZRANGEBYSCORE calls, each from just after the
// previous one's last score, so that Redis never builds one reply of a
// whole long series while other clients wait.
const ReadChunk = 2000

// readRange reads the members of key with score in [from, to] (to <= 0:
// no upper bound), oldest first, in chunks of ReadChunk. Every member has
// a score of its own (its bar's start), so a chunk that ends at score s
// is followed by the members after s, even when others were written or
// trimmed meanwhile.
func readRange[T any](ctx context.Context, rdb redis.UniversalClient, key string, from, to int64) ([]T, error) {
	max := "+inf"
	if to > 0 {
		max = strconv.FormatInt(to, 10)
	}
	var out []T
	min := strconv.FormatInt(from, 10)
	for {
		members, err := rdb.ZRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{Min: min, Max: max, Count: ReadChunk}).Result()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", key, err)
		}
		if out == nil {
			out = make([]T, 0, len(members))
		}
		for _, z := range members {
			var v T
			m, _ := z.Member.(string)
			if err := json.Unmarshal([]byte(m), &v); err != nil {
				return nil, fmt.Errorf("read %s: corrupt member: %w", key, err)
			}
			out = append(out, v)
		}
		if len(members) < ReadChunk {
			return out, nil
		}
		min = "(" + strconv.FormatFloat(members[len(members)-1].Score, 'f', -1, 64)
	}
}

// Clear's batch sizes: how many keys one SCAN step walks (larger steps mean
// fewer round trips over a big keyspace, each still a short stall) and how
// many keys one UNLINK deletes.
const (
	ClearScanCount = 1000
	ClearBatch     = 200
)

// Clear deletes the candle and indicator keys of sel with SCAN + UNLINK in
// batches (never KEYS), and returns how many keys were deleted. The
// patterns come from the validated selector, so input cannot widen them.
func (s *Store) Clear(ctx context.Context, sel contract.CacheSelector) (int, error) {
	deleted := 0
	err := s.scanSelector(ctx, sel, func(_ string, batch []string) error {
		if len(batch) == 0 {
			return nil
		}
		n, err := s.rdb.Unlink(ctx, batch...).Result()
		deleted += int(n)
		return err
	})
	return deleted, err
}

// CountCleared counts, by key prefix ("candles", "indicator"), the keys
// Clear would delete for sel: the same SCAN walk, without UNLINK (a
// clear-cache dry run). Keys SCAN returns twice are counted once.
func (s *Store) CountCleared(ctx context.Context, sel contract.CacheSelector) (map[string]int, error) {
	seen := map[string]bool{}
	counts := map[string]int{}
	err := s.scanSelector(ctx, sel, func(prefix string, batch []string) error {
		if _, ok := counts[prefix]; !ok {
			counts[prefix] = 0
		}
		for _, k := range batch {
			if !seen[k] {
				seen[k] = true
				counts[prefix]++
			}
		}
		return nil
	})
	return counts, err
}

// scanSelector walks the keys of sel with SCAN, pattern by pattern, and
// hands them to each in batches of at most ClearBatch, with the pattern's
// key prefix (the part before the first ':'); every pattern gets at least
// one call, an empty batch when it matched nothing.
func (s *Store) scanSelector(ctx context.Context, sel contract.CacheSelector, each func(prefix string, batch []string) error) error {
	patterns, err := sel.ScanPatterns()
	if err != nil {
		return err
	}
	return s.scanPatterns(ctx, patterns, each)
}

// ClearUser deletes every candle and indicator key of the user with id
// userID, of all its exchange accounts (a deleted tenant), with SCAN +
// UNLINK in batches, and returns how many keys were deleted.
func (s *Store) ClearUser(ctx context.Context, userID int64) (int, error) {
	patterns, err := contract.UserKeyPatterns(userID)
	if err != nil {
		return 0, err
	}
	deleted := 0
	err = s.scanPatterns(ctx, patterns, func(_ string, batch []string) error {
		if len(batch) == 0 {
			return nil
		}
		n, err := s.rdb.Unlink(ctx, batch...).Result()
		deleted += int(n)
		return err
	})
	return deleted, err
}

// scanPatterns is scanSelector for patterns built from validated parts.
func (s *Store) scanPatterns(ctx context.Context, patterns []string, each func(prefix string, batch []string) error) error {
	for _, pattern := range patterns {
		prefix, _, _ := strings.Cut(pattern, ":")
		iter := s.rdb.Scan(ctx, 0, pattern, ClearScanCount).Iterator()
		batch := make([]string, 0, ClearBatch)
		calls := 0
		flush := func() error {
			if len(batch) == 0 && calls > 0 {
				return nil
			}
			calls++
			err := each(prefix, batch)
			batch = batch[:0]
			return err
		}
		for iter.Next(ctx) {
			batch = append(batch, iter.Val())
			if len(batch) == ClearBatch {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := iter.Err(); err != nil {
			return err
		}
		if err := flush(); err != nil {
			return err
		}
	}
	return nil
}
