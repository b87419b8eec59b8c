package natsx_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"vigil.dev/pkg/natsx"
	"vigil.dev/pkg/testenv"
)

// TestReadFromLeaderSeesTheLastWrite writes a key of an R3 bucket over and
// over and reads it back at once through each server: KVGet always
// returns the revision just written. (kv.Get, a direct get, returned the
// previous one for about one read in forty here.)
func TestReadFromLeaderSeesTheLastWrite(t *testing.T) {
	c := testenv.StartNATSCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, js := testenv.Connect(t, c.Servers[0].ClientURL())
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "LEADER", Replicas: 3, History: 5})
	if err != nil {
		t.Fatal(err)
	}
	var readers []jetstream.JetStream
	var direct []jetstream.KeyValue
	for _, srv := range c.Servers {
		_, rjs := testenv.Connect(t, srv.ClientURL())
		readers = append(readers, rjs)
		d, err := rjs.KeyValue(ctx, "LEADER")
		if err != nil {
			t.Fatal(err)
		}
		direct = append(direct, d)
	}
	const writes = 1000
	staleDirect := 0
	for i := range writes {
		value := fmt.Sprint("v", i)
		rev, err := kv.Put(ctx, "k", []byte(value))
		if err != nil {
			t.Fatal(err)
		}
		if d, err := direct[(i+1)%len(direct)].Get(ctx, "k"); err == nil && d.Revision() != rev {
			staleDirect++
		}
		e, err := natsx.KVGet(ctx, readers[i%len(readers)], "LEADER", "k")
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		if e.Revision() != rev || string(e.Value()) != value || e.Key() != "k" || e.Bucket() != "LEADER" {
			t.Fatalf("write %d (revision %d, %q): read revision %d, %q", i, rev, value, e.Revision(), e.Value())
		}
	}
	t.Logf("direct gets sent just before: %d of %d returned an older revision", staleDirect, writes)
}

// TestKVGetOfAKeyWithoutValue: a key never written, deleted or purged is
// jetstream.ErrKeyNotFound, as kv.Get reports it.
func TestKVGetOfAKeyWithoutValue(t *testing.T) {
	srv := testenv.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, js := testenv.Connect(t, srv.URL())
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: fmt.Sprint("NOVALUE", time.Now().UnixNano())})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"deleted", "purged", "kept"} {
		if _, err := kv.Put(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "purged"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"never", "deleted", "purged"} {
		if _, err := natsx.KVGet(ctx, js, kv.Bucket(), k); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("KVGet(%s) = %v, want ErrKeyNotFound", k, err)
		}
	}
	e, err := natsx.KVGet(ctx, js, kv.Bucket(), "kept")
	if err != nil || string(e.Value()) != "kept" || e.Operation() != jetstream.KeyValuePut || e.Created().IsZero() {
		t.Fatalf("KVGet(kept) = %v, %v", e, err)
	}
	if _, err := natsx.KVGet(ctx, js, "NOSUCHBUCKET", "k"); err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("KVGet of a missing bucket = %v, want the server's error", err)
	}
}
