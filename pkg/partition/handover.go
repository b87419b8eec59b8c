package partition

// This file: hand-over (see the package doc): which partitions this
// instance should own (Assign), claiming, releasing and re-writing their
// leases in LeaseBucket, and reconcile, which applies a membership change.

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/membership"
	"vigil.dev/pkg/natsx"
)

// lease is a held partition: the lease's revision and the fencing epoch.
type lease struct {
	revision uint64
	epoch    int64
}

// key is the lease key of partition k.
func (c *Consumer) key(k int) string { return c.opts.Service + "." + strconv.Itoa(k) }

// wanted lists the partitions the live members give this instance.
func (c *Consumer) wanted() map[int]bool {
	self := c.opts.Members.Self()
	out := map[int]bool{}
	for k, owner := range Assign(c.opts.Members.Members(), c.opts.Count) {
		if owner == self {
			out[k] = true
		}
	}
	return out
}

// Assign gives each of n partitions an owner among members: rendezvous
// hashing (membership.Owner over the partition's key "p<k>") bounded so
// that the shares differ by one at most (the first n mod len(members)
// members in sorted order may take one more), taking the partitions in
// order. Every instance computes the same assignment from the same member
// list; an added or removed member moves about its share.
func Assign(members []string, n int) []string {
	owners := make([]string, n)
	if len(members) == 0 {
		return owners
	}
	sorted := slices.Sorted(slices.Values(members))
	room := make(map[string]int, len(sorted))
	for i, m := range sorted {
		room[m] = n / len(sorted)
		if i < n%len(sorted) {
			room[m]++
		}
	}
	open := make([]string, 0, len(sorted))
	for k := range owners {
		open = open[:0]
		for _, m := range sorted {
			if room[m] > 0 {
				open = append(open, m)
			}
		}
		owners[k] = membership.Owner(open, "p"+strconv.Itoa(k))
		room[owners[k]]--
	}
	return owners
}

// reconcile makes the owned partitions what the membership says: it
// drains and releases the lost ones, then claims the gained ones. It
// reports whether every wanted partition is owned.
func (c *Consumer) reconcile(ctx context.Context) (complete bool) {
	if time.Since(c.bucketChecked) >= reconcileEvery {
		c.bucketChecked = time.Now()
		c.ensureLeases(ctx)
	}
	want := c.wanted()
	c.mu.RLock()
	var lose []int
	for k := range c.owned {
		if !want[k] {
			lose = append(lose, k)
		}
	}
	c.mu.RUnlock()
	if len(lose) > 0 {
		c.release(ctx, lose)
	}
	var gained []int
	complete = true
	for k := range want {
		if c.Owns(k) {
			continue
		}
		l, ok := c.claim(ctx, k)
		if !ok {
			complete = false
			continue
		}
		c.mu.Lock()
		c.owned[k] = l
		c.mu.Unlock()
		gained = append(gained, k)
	}
	if len(gained) > 0 {
		if err := c.refilter(ctx); err != nil {
			c.opts.Log.Error("adding partitions to the filter failed; retried", "consumer", c.name, "err", err)
			c.mu.Lock()
			for _, k := range gained {
				delete(c.owned, k)
			}
			c.mu.Unlock()
			c.releaseLeases(ctx, gained)
			return false
		}
		c.opts.Log.Info("partitions gained", "consumer", c.name, "partitions", gained, "owned", len(c.Partitions()))
		c.opts.Changed(ctx)
	}
	return complete
}

// claim takes the lease of partition k when it is free, already this
// instance's, or held by an instance that is not a live member, and takes
// a fencing epoch. ok is false while a live member holds it.
func (c *Consumer) claim(ctx context.Context, k int) (l lease, ok bool) {
	self := c.opts.Members.Self()
	key := c.key(k)
	e, err := natsx.KVGet(ctx, c.opts.JS, LeaseBucket, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		l.revision, err = c.leases.Create(ctx, key, []byte(self))
	case err != nil:
	case string(e.Value()) == self:
		l.revision = e.Revision()
	case slices.Contains(c.opts.Members.Members(), string(e.Value())):
		return l, false // the holder hands it over once it sees the change
	default:
		c.opts.Log.Info("taking over the partition of a member that is gone", "partition", k, "holder", string(e.Value()))
		l.revision, err = c.leases.Update(ctx, key, []byte(self), e.Revision())
	}
	if err != nil {
		if ctx.Err() == nil {
			c.opts.Log.Debug("claiming a partition failed; retried", "partition", k, "err", err)
		}
		return l, false
	}
	if c.opts.Fence != nil {
		if l.epoch, err = c.opts.Fence(ctx, k); err != nil {
			c.opts.Log.Warn("fencing a partition failed; retried", "partition", k, "err", err)
			_ = c.leases.Delete(ctx, key, jetstream.LastRevision(l.revision))
			return l, false
		}
	}
	return l, true
}

// release hands partitions over: Consume is drained and every delivered
// message handled, the partitions leave the filter, the service drops
// their state (Changed), and the leases are deleted.
func (c *Consumer) release(ctx context.Context, parts []int) {
	if err := c.drain(ctx); err != nil {
		c.opts.Log.Warn("draining before a hand-over", "consumer", c.name, "err", err)
	}
	held := map[int]lease{}
	c.mu.Lock()
	for _, k := range parts {
		held[k] = c.owned[k]
		delete(c.owned, k)
	}
	c.mu.Unlock()
	if err := c.refilter(ctx); err != nil {
		c.opts.Log.Warn("removing partitions from the filter failed", "consumer", c.name, "err", err)
	}
	c.opts.Changed(ctx)
	for k, l := range held {
		if err := c.leases.Delete(ctx, c.key(k), jetstream.LastRevision(l.revision)); err != nil {
			c.opts.Log.Warn("releasing a partition lease failed", "partition", k, "err", err)
		}
	}
	c.opts.Log.Info("partitions released", "consumer", c.name, "partitions", parts, "owned", len(c.Partitions()))
	if err := c.consumeOnce(); err != nil && !errors.Is(err, ErrStopped) {
		c.opts.Log.Error("consuming again after a hand-over failed", "consumer", c.name, "err", err)
		c.signalLost()
	}
}

// releaseLeases deletes the leases of partitions claimed but not taken.
func (c *Consumer) releaseLeases(ctx context.Context, parts []int) {
	for _, k := range parts {
		_ = c.leases.Delete(ctx, c.key(k))
	}
}

// ensureLeases creates the lease bucket again when it is gone (deleted
// by an operator, or lost with a server's store) and, once it was created
// again (by this instance or another: its stream's creation time
// changed), writes the leases of the owned partitions again, so that no
// other instance claims them as free. A partition whose lease another
// instance created first is dropped: that instance owns it now, with a
// newer fencing epoch.
func (c *Consumer) ensureLeases(ctx context.Context) {
	created, err := c.leaseBucketCreated(ctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		c.opts.Log.Warn("the partition lease bucket is gone; creating it again", "consumer", c.name, "bucket", LeaseBucket)
		if _, err = natsx.EnsureKeyValue(ctx, c.opts.JS, leaseBucket, natsx.LogTo(c.opts.Log)); err == nil {
			created, err = c.leaseBucketCreated(ctx)
		}
	}
	if err != nil || created.Equal(c.bucketCreated) {
		return // unchanged, or the server did not answer: tried again
	}
	c.bucketCreated = created
	self := []byte(c.opts.Members.Self())
	var dropped []int
	for _, k := range c.Partitions() {
		rev, err := c.leases.Create(ctx, c.key(k), self)
		c.mu.Lock()
		if err != nil {
			delete(c.owned, k)
			dropped = append(dropped, k)
		} else if l, ok := c.owned[k]; ok {
			l.revision = rev
			c.owned[k] = l
		}
		c.mu.Unlock()
	}
	c.opts.Log.Info("partition leases written again into a new lease bucket", "consumer", c.name, "dropped", dropped)
	if len(dropped) > 0 {
		c.dropFenced(ctx)
	}
}

// leaseBucketCreated is when the lease bucket's stream was created.
func (c *Consumer) leaseBucketCreated(ctx context.Context) (time.Time, error) {
	s, err := c.opts.JS.Stream(ctx, "KV_"+LeaseBucket)
	if err != nil {
		return time.Time{}, err
	}
	return s.CachedInfo().Created, nil
}
