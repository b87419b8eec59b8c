package testenv

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/localstack"
)

// redisDatabases is the number of logical databases of the shared Redis,
// hence how many Redis calls a test package may make.
const redisDatabases = 4096

// Redis returns the URL of a logical database of the package's shared
// Redis (redis://127.0.0.1:<port>/<n>) that no other call gets, empty at
// the start of the test and flushed at its end. The server starts on
// first use.
func Redis(t testing.TB) string {
	t.Helper()
	requireRun(t)
	srv, err := env.redis.get(func(ctx context.Context, dir string) (*localstack.Redis, error) {
		return localstack.StartRedis(ctx, localstack.Options{
			Dir:            filepath.Join(dir, "redis"),
			RedisDatabases: redisDatabases,
		})
	})
	if err != nil {
		t.Fatalf("testenv: start Redis: %v", err)
	}
	n := env.redisDatabases.Add(1) - 1
	if n >= redisDatabases {
		t.Fatalf("testenv: the package used all %d Redis databases", redisDatabases)
	}
	url := srv.DatabaseURL(int(n))
	flush := func() error {
		client := redis.NewClient(&redis.Options{Addr: srv.Addr(), DB: int(n)})
		defer client.Close()
		return client.FlushDB(context.Background()).Err()
	}
	if err := flush(); err != nil {
		t.Fatalf("testenv: flush Redis database %d: %v", n, err)
	}
	t.Cleanup(func() {
		if err := flush(); err != nil {
			t.Errorf("testenv: flush Redis database %d: %v", n, err)
		}
	})
	return url
}
