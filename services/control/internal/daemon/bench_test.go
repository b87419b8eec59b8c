package daemon_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
)

// BenchmarkCommand measures a command from request to its result arriving
// on vigil.result.<user>.<id>: reload-settings, three steps each confirmed
// by three instances of a service. users runs that many users' commands at
// once (the time is per command).
func BenchmarkCommand(b *testing.B) {
	for _, users := range []int{1, 8} {
		b.Run(fmt.Sprintf("users=%d", users), func(b *testing.B) {
			e := newEnv(b, 3)
			e.startControl("c1", testSettings(), 0)
			tokens := make([]string, users)
			results := make([]chan *nats.Msg, users)
			for i := range tokens {
				tokens[i] = fmt.Sprintf("bench%d", i)
				e.addUser(tokens[i], validSettings)
				results[i] = make(chan *nats.Msg, 1)
				sub, err := e.nc.ChanSubscribe("vigil.result."+tokens[i]+".*", results[i])
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = sub.Unsubscribe() })
			}
			b.ResetTimer()
			var wg sync.WaitGroup
			for i, token := range tokens {
				wg.Go(func() {
					for range b.N {
						resp, err := e.nc.Request("vigil.cmd."+token+".reload-settings", nil, 10*time.Second)
						if err != nil {
							b.Error(err)
							return
						}
						var r contract.Result
						select {
						case m := <-results[i]:
							if err := json.Unmarshal(m.Data, &r); err != nil || r.Status != contract.StatusSucceeded {
								b.Errorf("result %s: %v", m.Data, err)
								return
							}
						case <-time.After(10 * time.Second):
							b.Errorf("no result for %s", resp.Data)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*users)/1000, "ms/command")
		})
	}
}
