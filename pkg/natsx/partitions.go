package natsx

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/config"
	"vigil.dev/pkg/contract"
)

// Partition limits (VIGIL_PARTITIONS).
const (
	// DefaultPartitions is the partition count of VIGIL_CANDLES and
	// VIGIL_INDICATORS unless VIGIL_PARTITIONS says otherwise: more than
	// any instance count we expect, so each instance gets a fair share.
	DefaultPartitions = config.DefaultPartitions
	// MaxPartitions bounds VIGIL_PARTITIONS (a consumer filters on up to
	// this many subjects).
	MaxPartitions = config.MaxPartitions
)

// partitionToken is the token that precedes the partition number in a
// stored subject: vigil.candle.p.<k>.<user>.<ex>.<sym>.<tf>.
const partitionToken = "p"

// A Partitioned describes a stream whose stored subjects carry a
// partition number computed by the server from some of the published
// subject's tokens.
type Partitioned struct {
	// Stream is the stream's name.
	Stream string
	// Prefix is the subjects' first two tokens, e.g. "vigil.candle".
	Prefix string
	// Wildcards is how many tokens follow the prefix in a published
	// subject.
	Wildcards int
	// Keys are the 1-based wildcard positions hashed into the partition.
	Keys []int
}

// CandlePartitions partitions VIGIL_CANDLES by series (all four
// wildcards: user, exchange, symbol, timeframe), so a series stays in one
// partition and in order.
var CandlePartitions = Partitioned{Stream: contract.StreamCandles, Prefix: "vigil.candle", Wildcards: 4, Keys: []int{1, 2, 3, 4}}

// IndicatorPartitions partitions VIGIL_INDICATORS by user, since alerts
// own users.
var IndicatorPartitions = Partitioned{Stream: contract.StreamIndicators, Prefix: "vigil.indicator", Wildcards: 4, Keys: []int{1}}

// PartitionedStreams are the partitioned streams of the contract.
var PartitionedStreams = []Partitioned{CandlePartitions, IndicatorPartitions}

// ErrPartitions reports a partition count that is out of range or differs
// from the one an existing stream was created with.
var ErrPartitions = errors.New("VIGIL_PARTITIONS")

// ValidatePartitions checks a partition count.
func ValidatePartitions(n int) error {
	if n < 1 || n > MaxPartitions {
		return fmt.Errorf("%w: %d is not between 1 and %d", ErrPartitions, n, MaxPartitions)
	}
	return nil
}

// Transform is the stream subject transform that stores a published
// subject <prefix>.<w1>...<wN> as <prefix>.p.<k>.<w1>...<wN>, k in [0, n).
func (p Partitioned) Transform(n int) *jetstream.SubjectTransformConfig {
	src := p.Prefix + strings.Repeat(".*", p.Wildcards)
	keys := make([]string, len(p.Keys))
	for i, k := range p.Keys {
		keys[i] = strconv.Itoa(k)
	}
	dest := p.Prefix + "." + partitionToken + ".{{partition(" + strconv.Itoa(n) + "," + strings.Join(keys, ",") + ")}}"
	for i := 1; i <= p.Wildcards; i++ {
		dest += ".{{wildcard(" + strconv.Itoa(i) + ")}}"
	}
	return &jetstream.SubjectTransformConfig{Source: src, Destination: dest}
}

// Filter is the consumer filter subject of partition k.
func (p Partitioned) Filter(k int) string {
	return p.Prefix + "." + partitionToken + "." + strconv.Itoa(k) + ".>"
}

// All is the filter of a consumer that owns every partition: the
// stream's subjects (<prefix>.>), one filter instead of one per
// partition. nats-server (2.15) delivers to a consumer with several
// filters by intersecting them with every subject of a message block, per
// message delivered, which at a thousand series made delivery the
// bound of the whole pipeline; a consumer whose one filter is the stream's
// subject is served by a linear scan.
func (p Partitioned) All() string {
	return p.Prefix + ".>"
}

// NoPartition is a consumer filter that matches no stored message: the
// filter of a consumer that owns no partition (an empty filter would
// match the whole stream).
func (p Partitioned) NoPartition() string {
	return p.Prefix + "." + partitionToken + ".none"
}

// StoredFilter turns a filter on published subjects (<prefix>.<rest>) into
// the same filter on stored subjects (<prefix>.p.*.<rest>), e.g. for
// counting a user's messages in the stream.
func (p Partitioned) StoredFilter(filter string) string {
	rest, ok := strings.CutPrefix(filter, p.Prefix+".")
	if !ok {
		return filter
	}
	return p.Prefix + "." + partitionToken + ".*." + rest
}

// StoredFilter turns a filter on the published subjects of stream into
// the same filter on its stored subjects; for a stream that is not
// partitioned it is the filter itself.
func StoredFilter(stream, filter string) string {
	for _, p := range PartitionedStreams {
		if p.Stream == stream {
			return p.StoredFilter(filter)
		}
	}
	return filter
}

// Of is the partition, among n, of a published subject's key tokens (in the
// order of Keys): the server's {{partition}} hash, FNV-1a 32 of the tokens
// concatenated, modulo n.
func Of(n int, keys ...string) int {
	h := fnv.New32a()
	for _, k := range keys {
		h.Write([]byte(k))
	}
	return int(h.Sum32() % uint32(n))
}

// Published splits a stored subject <prefix>.p.<k>.<rest> into the
// published subject <prefix>.<rest> and k. A subject without a partition
// token is returned as it is, with k = -1.
func Published(stored string) (subject string, k int) {
	parts := strings.SplitN(stored, ".", 5)
	if len(parts) < 5 || parts[2] != partitionToken {
		return stored, -1
	}
	k, err := strconv.Atoi(parts[3])
	if err != nil || k < 0 {
		return stored, -1
	}
	return parts[0] + "." + parts[1] + "." + parts[4], k
}

// partitionCount matches the count in a Transform's destination.
var partitionCount = regexp.MustCompile(`\{\{\s*partition\(\s*(\d+)\s*,`)

// countOf is the partition count of a transform made by Transform, or 0
// for a stream without one.
func countOf(t *jetstream.SubjectTransformConfig) int {
	if t == nil {
		return 0
	}
	m := partitionCount.FindStringSubmatch(t.Destination)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// checkPartitionCount refuses to change the partition count of an existing
// partitioned stream: the instances running with the old count would
// filter on the wrong partitions. A stream without partitions (created
// before them) is migrated by the update.
func checkPartitionCount(ctx context.Context, js jetstream.JetStream, p Partitioned, n int) error {
	s, err := js.Stream(ctx, p.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stream %s: %w", p.Stream, err)
	}
	if have := countOf(s.CachedInfo().Config.SubjectTransform); have != 0 && have != n {
		return fmt.Errorf("%w: %d but stream %s is partitioned into %d; set VIGIL_PARTITIONS=%d on every vigil binary, "+
			"or change the count as docs/operators.md \"Changing the partition count\" says", ErrPartitions, n, p.Stream, have, have)
	}
	return nil
}
