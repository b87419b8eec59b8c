package ctl

// This file: vigilctl tenant delete: pause the tenant, then delete its
// desired state, consumers, stream messages, KV entries, Redis keys and
// users row, sweeping until nothing is left.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/redisstore"
	"vigil.dev/services/control/internal/ledger"
)

// sweepRounds bounds how often delete sweeps the streams and Redis until
// a sweep finds nothing (services that had not seen the deletion yet may
// still write a last message or key).
const sweepRounds = 20

func newTenantDeleteCmd(sys IO, conn *connFlags) *cobra.Command {
	var purgeAudit bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a tenant: pause, desired state, stream messages, KV entries, Redis keys, users row; audit rows marked",
		Example: `  vigilctl tenant delete carol
  vigilctl tenant delete carol --purge-audit   # delete command_log and alert_events rows too`,
		Args: exactArgs(1, "the tenant name (its user token)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := tenantArg(args)
			if err != nil {
				return err
			}
			redisURL := sys.Getenv("REDIS_URL")
			if redisURL == "" {
				return usageErrorf("tenant delete deletes the tenant's Redis keys: set REDIS_URL")
			}
			ctx := cmd.Context()
			pool, err := openPostgres(ctx, sys.Getenv)
			if err != nil {
				return err
			}
			defer pool.Close()
			users := db.NewUsers(pool)
			u, err := users.UserByToken(ctx, name)
			again := false
			if errors.Is(err, db.ErrUnknownUser) {
				id, derr := users.DeletedTenant(ctx, name)
				if derr != nil {
					return unknownTenant(name, err)
				}
				u, again = db.User{ID: id, Token: name}, true
			} else if err != nil {
				return err
			}
			nc, err := conn.connect(ctx, sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			rdb, err := redisstore.NewClient(ctx, redisURL)
			if err != nil {
				return err
			}
			defer rdb.Close()
			d := deleter{sys: sys, nc: nc, pool: pool, store: redisstore.New(rdb, 0), users: users, timeout: timeout}
			return d.delete(ctx, u, again, purgeAudit)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&purgeAudit, "purge-audit", false, "delete the tenant's command_log and alert_events rows instead of marking them deleted_at")
	f.DurationVar(&timeout, "timeout", DefaultWait, "how long to wait for the pause")
	return cmd
}

// deleter deletes one tenant.
type deleter struct {
	sys     IO
	nc      *nats.Conn
	pool    *pgxpool.Pool
	store   *redisstore.Store
	users   *db.Users
	timeout time.Duration
}

// delete runs the deletion of u (again: deleted before, sweep again).
func (d deleter) delete(ctx context.Context, u db.User, again, purgeAudit bool) error {
	out := d.sys.Stdout
	js, err := jetstream.New(d.nc)
	if err != nil {
		return err
	}
	if again {
		fmt.Fprintf(out, "tenant %s (user id %d) was deleted before; sweeping again\n", u.Token, u.ID)
	} else {
		d.pause(ctx, u.Token)
	}
	if err := deleteState(ctx, js, u.Token); err != nil {
		return err
	}
	if err := d.deleteConsumers(ctx, js, u.Token); err != nil {
		return err
	}
	purged, keys, err := d.sweep(ctx, js, u)
	if err != nil {
		return err
	}
	for _, p := range purged {
		fmt.Fprintf(out, "purged %s %s: %d messages\n", p.Stream, p.Subject, p.n)
	}
	fmt.Fprintf(out, "redis: %d keys deleted (candles:%d:*, indicator:%d:*)\n", keys, u.ID, u.ID)
	del, err := d.users.DeleteTenant(ctx, u, purgeAudit)
	if err != nil {
		return err
	}
	row := "users row deleted"
	if again {
		row = "no users row left"
	}
	audit := "marked deleted_at"
	if del.AuditPurged {
		audit = "deleted"
	}
	fmt.Fprintf(out, "postgres: %s; audit rows %s: %d command_log, %d alert_events\n", row, audit, del.CommandRows, del.AlertRows)
	fmt.Fprintf(out, "tenant %s deleted; remove account %s from the NATS config and reload (nats-server --signal reload) if not done yet\n",
		u.Token, accountName(u.Token))
	return nil
}

// deleteState deletes the user's desired state, so every service instance
// forgets the user (a delete marker that the sweep purges once the
// services saw it); nothing when there is none.
func deleteState(ctx context.Context, js jetstream.JetStream, user string) error {
	kv, err := js.KeyValue(ctx, contract.BucketState)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("desired state: %w", err)
	}
	if _, err := kv.Get(ctx, contract.StateKey(user)); errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err := kv.Delete(ctx, contract.StateKey(user)); err != nil {
		return fmt.Errorf("delete the desired state: %w", err)
	}
	return nil
}

// pause pauses the user and waits for its audit row, so that the pause is
// in command_log before the audit records are purged; a pause that fails
// (control down) is reported and the deletion goes on: the deleted
// desired state stops the services as well.
func (d deleter) pause(ctx context.Context, user string) {
	s := sender{sys: d.sys, nc: d.nc, opts: commandOptions{user: user, operator: d.sys.Getenv("USER"), timeout: d.timeout,
		id: "tenant-delete-" + strconv.FormatInt(time.Now().UnixNano(), 36)}}
	if err := s.send(ctx, contract.CmdPause, []byte("{}")); err != nil {
		fmt.Fprintf(d.sys.Stdout, "pause failed (%v); deleting the desired state stops the services instead\n", err)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for wctx.Err() == nil {
		status, found, err := ledger.Recorded(wctx, d.pool, s.opts.id)
		if err == nil && found && status != ledger.StatusAccepted && status != ledger.StatusRunning {
			return
		}
		select {
		case <-wctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	fmt.Fprintf(d.sys.Stdout, "the pause is not in command_log yet; its audit record is purged with the rest\n")
}

// deleteConsumers deletes the consumers that read only the user's
// subjects (vigil-alerts' webhook consumer vigil-webhook-<user> on
// VIGIL_ALERTS), so nothing of the user is delivered again.
func (d deleter) deleteConsumers(ctx context.Context, js jetstream.JetStream, user string) error {
	subjects, err := natsx.UserSubjects(user)
	if err != nil {
		return err
	}
	own := map[string]bool{}
	for _, s := range subjects {
		own[s.Stream+" "+s.Subject] = true
	}
	for _, name := range []string{contract.StreamAlerts, contract.StreamResults} {
		stream, err := js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("stream %s: %w", name, err)
		}
		infos := stream.ListConsumers(ctx)
		var doomed []string
		for info := range infos.Info() {
			filters := append([]string{info.Config.FilterSubject}, info.Config.FilterSubjects...)
			mine := false
			for _, f := range filters {
				if f == "" {
					continue
				}
				if !own[name+" "+f] {
					mine = false
					break
				}
				mine = true
			}
			if mine {
				doomed = append(doomed, info.Name)
			}
		}
		if err := infos.Err(); err != nil {
			return fmt.Errorf("consumers of %s: %w", name, err)
		}
		for _, c := range doomed {
			if err := stream.DeleteConsumer(ctx, c); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("delete consumer %s of %s: %w", c, name, err)
			}
			fmt.Fprintf(d.sys.Stdout, "consumer %s of %s deleted\n", c, name)
		}
	}
	return nil
}

// purge is one subject purged and how many messages it held.
type purge struct {
	natsx.StreamSubject
	n uint64
}

// sweep purges the user's subjects of every stream and deletes its Redis
// keys, again until a sweep finds nothing (a service that had not seen
// the deletion may write a last message or key), at most sweepRounds
// times.
func (d deleter) sweep(ctx context.Context, js jetstream.JetStream, u db.User) ([]purge, int, error) {
	subjects, err := natsx.UserSubjects(u.Token)
	if err != nil {
		return nil, 0, err
	}
	total := make([]purge, len(subjects))
	keys := 0
	for round := 0; round < sweepRounds; round++ {
		found := false
		for i, s := range subjects {
			total[i].StreamSubject = s
			n, err := purgeSubject(ctx, js, s)
			if err != nil {
				return nil, 0, err
			}
			total[i].n += n
			found = found || n > 0
		}
		k, err := d.store.ClearUser(ctx, u.ID)
		if err != nil {
			return nil, 0, fmt.Errorf("redis: %w", err)
		}
		keys += k
		if !found && k == 0 {
			return total, keys, nil
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return total, keys, nil
}

// purgeSubject purges the messages of s and returns how many there were;
// a stream that does not exist holds nothing.
func purgeSubject(ctx context.Context, js jetstream.JetStream, s natsx.StreamSubject) (uint64, error) {
	stream, err := js.Stream(ctx, s.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", s.Stream, err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(s.Subject))
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", s.Stream, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	if n == 0 {
		return 0, nil
	}
	if err := stream.Purge(ctx, jetstream.WithPurgeSubject(s.Subject)); err != nil {
		return 0, fmt.Errorf("purge %s %s: %w", s.Stream, s.Subject, err)
	}
	return n, nil
}
