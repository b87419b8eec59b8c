package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/service"
)

// A service declares its verbs at Start and gives each its handler with
// Handle. Every instance answers vigil.svc.<svc>.<verb> with a
// contract.SvcReply: the handler's value as the result, or its error as
// ok:false with the contract error code.
func ExampleStart() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "example-service-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv, err := localstack.StartNATS(ctx, localstack.Options{Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Stop()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		log.Fatal(err)
	}

	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	var mu sync.Mutex // handlers run on goroutines of their own
	paused := map[string]bool{}
	svc, err := service.Start(nc, service.Config{
		Svc:         contract.SvcFeed,
		Name:        "vigil-example",
		Description: "an example service",
		Instance:    "example-1",
		Verbs:       []contract.Verb{contract.VerbPause},
	}, quiet, func(_ context.Context, user string) any {
		mu.Lock()
		defer mu.Unlock()
		return map[string]bool{"paused": paused[user]}
	})
	if err != nil {
		log.Fatal(err)
	}
	defer svc.Shutdown(10 * time.Second)
	if err := svc.Handle(contract.VerbPause, func(_ context.Context, req contract.SvcRequest) (any, error) {
		if req.User == "" {
			return nil, &contract.Error{Code: contract.CodeInvalidPayload, Message: "user is required"}
		}
		mu.Lock()
		defer mu.Unlock()
		paused[req.User] = true
		return map[string]bool{"paused": true}, nil
	}); err != nil {
		log.Fatal(err)
	}

	call := func(verb contract.Verb, req contract.SvcRequest) {
		body, _ := json.Marshal(req)
		msg, err := nc.Request(contract.SvcSubject(contract.SvcFeed, verb), body, 10*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		var reply contract.SvcReply
		if err := json.Unmarshal(msg.Data, &reply); err != nil {
			log.Fatal(err)
		}
		if reply.OK {
			fmt.Printf("%s: ok %s\n", verb, reply.Result)
		} else {
			fmt.Printf("%s: %s (%s)\n", verb, reply.Error.Code, reply.Error.Message)
		}
	}
	call(contract.VerbPause, contract.SvcRequest{})
	call(contract.VerbPause, contract.SvcRequest{User: "alice"})
	call(contract.VerbStatus, contract.SvcRequest{User: "alice"})
	// Output:
	// pause: invalid_payload (user is required)
	// pause: ok {"paused":true}
	// status: ok {"paused":true}
}
