package membership_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/membership"
)

// Two instances of a service share its users: each owns the users that
// rendezvous hashing gives it among the live members, all instances agree
// on every owner, and when one leaves (or dies, or is cut off) the other
// takes its users over.
func Example() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "example-membership-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	srv, err := localstack.StartNATS(ctx, localstack.Options{Dir: dir})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Stop()

	join := func(instance string) *membership.Group {
		nc, err := nats.Connect(srv.URL())
		if err != nil {
			log.Fatal(err)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			log.Fatal(err)
		}
		g, err := membership.Join(ctx, js, "vigil-example", instance, membership.Options{})
		if err != nil {
			log.Fatal(err)
		}
		return g
	}
	a := join("a")
	changes := a.Changes()
	b := join("b")
	waitMembers := func(g *membership.Group, want ...string) {
		for !slices.Equal(g.Members(), want) {
			select {
			case <-changes:
			case <-time.After(30 * time.Second):
				log.Fatalf("%s sees %v, want %v", g.Self(), g.Members(), want)
			}
		}
	}
	waitMembers(a, "a", "b")
	fmt.Println("members:", a.Members())
	fmt.Println("owner of alice:", a.Owner("alice"), "(b agrees:", b.Owner("alice") == a.Owner("alice"), ")")
	fmt.Println("owner of bob:", a.Owner("bob"))

	// b shuts down: Leave removes it at once, so a owns everything.
	if err := b.Leave(ctx); err != nil {
		log.Fatal(err)
	}
	waitMembers(a, "a")
	fmt.Println("after b left:", a.Members(), "a owns bob:", a.Owns("bob"))
	if err := a.Leave(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// members: [a b]
	// owner of alice: a (b agrees: true )
	// owner of bob: b
	// after b left: [a] a owns bob: true
}
