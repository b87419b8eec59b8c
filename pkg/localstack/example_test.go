package localstack_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/redis/go-redis/v9"

	"vigil.dev/pkg/localstack"
)

// A private Redis for a program or a test: started on a free loopback port
// with its files in a directory of its own, stopped by Stop.
func ExampleStartRedis() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "example-redis-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	srv, err := localstack.StartRedis(ctx, localstack.Options{Dir: dir})
	if err != nil {
		log.Fatal(err) // e.g. redis-server missing: run `make deps`
	}
	defer srv.Stop()

	opts, err := redis.ParseURL(srv.URL())
	if err != nil {
		log.Fatal(err)
	}
	client := redis.NewClient(opts)
	defer client.Close()
	fmt.Println(client.Ping(ctx).Val())
	// Output: PONG
}

// An embedded NATS server with JetStream, its store in a directory of its
// own.
func ExampleStartNATS() {
	dir, err := os.MkdirTemp("", "example-nats-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	srv, err := localstack.StartNATS(context.Background(), localstack.Options{Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Stop()
	fmt.Println("JetStream:", srv.JetStreamEnabled())
	// Output: JetStream: true
}
