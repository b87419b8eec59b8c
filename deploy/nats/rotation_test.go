//go:build !race

// The race detector flags a data race inside nats-server itself (v2.15.2:
// Server.ReloadOptions writes the options while a stream's direct get reads
// them unlocked) when this test reloads its embedded server under running
// services; it is the server's, not vigil's, and made make test fail now
// and then. make test runs this file without -race (Makefile, test).

package nats

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/pkg/localstack"
	"vigil.dev/pkg/testenv"
)

// writeInlineConf writes dir/nats.conf: auth.conf with the passwords
// written in (as docs/security.md's rotation recipe has it: nats-server
// reads the file again on reload, while the environment its $VARIABLES
// come from cannot change under a running server).
func writeInlineConf(t *testing.T, dir string, pw map[string]string) string {
	t.Helper()
	conf := string(readFile(t, "auth.conf"))
	for k, v := range pw {
		conf = strings.ReplaceAll(conf, "$"+k, fmt.Sprintf("%q", v))
	}
	path := filepath.Join(dir, "nats.conf")
	writeSecret(t, path, conf)
	return path
}

// TestRotationUnderRunningServices runs the four real services over TLS
// (NATS, Redis and PostgreSQL, every server certificate verified) on
// their own NATS users with NATS_PASSWORD_FILE, alice commanding them
// all the while, and rotates under them, with no restart of a service:
// the NATS server's certificate (to one signed by a new CA, the clients'
// CA file extended with it first) and every service's NATS password (the
// password files written first, then the server's passwords file and a
// reload, which closes the connections that used the old passwords).
// The services reconnect with the new password and the new certificate,
// commands succeed afterwards, and every command acked during the
// rotation gets its result.
func TestRotationUnderRunningServices(t *testing.T) {
	began := time.Now()
	confDir := t.TempDir()
	copyFile(t, "services.conf", filepath.Join(confDir, "services.conf"))
	pw := map[string]string{}
	for k, v := range passwords {
		pw[k] = v
	}
	conf := writeInlineConf(t, confDir, pw)
	srv := testenv.StartTLS(t, testenv.TLSOptions{NATSConfig: conf})
	certs := srv.Certs
	// The clients' CA bundle, which the rotation extends.
	clientCA := filepath.Join(confDir, "clients-ca.pem")
	copyFile(t, certs.CA, clientCA)

	bin := testenv.BuildBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dbURL := strings.Replace(srv.Postgres.URL(), url.QueryEscape(certs.CA), url.QueryEscape(clientCA), 1)
	pool, err := db.NewPool(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := db.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.NewUsers(pool).SeedUser(ctx, "test", "alice", json.RawMessage(liveSettings), "coinbase"); err != nil {
		t.Fatal(err)
	}
	admin, err := nats.Connect(srv.NATS.URL(), nats.UserInfo("admin", "admin-pw"), nats.RootCAs(certs.CA))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	natsHost := strings.TrimPrefix(srv.NATS.URL(), "tls://")
	env := append(os.Environ(), "REDIS_URL="+srv.Redis.URL(), "REDIS_CA="+clientCA, "DATABASE_URL="+dbURL,
		"NATS_CA="+clientCA, "VIGIL_FEED_SOURCE=sim", "VIGIL_LOG_LEVEL=debug", "VIGIL_SHUTDOWN_TIMEOUT=5s")
	pwFiles := map[string]string{}
	for _, svc := range []string{"vigil-feed", "vigil-indicators", "vigil-alerts", "vigil-control"} {
		pwFiles[svc] = filepath.Join(confDir, svc+".password")
		writeSecret(t, pwFiles[svc], passwords[passwordVar(svc)])
	}
	// The four start side by side.
	procs := make(chan *localstack.ServiceProcess, len(pwFiles))
	errs := make(chan error, len(pwFiles))
	var starting sync.WaitGroup
	for svc, pwFile := range pwFiles {
		starting.Go(func() {
			p, err := localstack.StartService(ctx, admin, localstack.ServiceOptions{
				Binary: filepath.Join(bin, svc), Service: svc, Instance: svc + "-1",
				Env:     append(slices.Clip(env), "NATS_URL=tls://"+svc+"@"+natsHost, "NATS_PASSWORD_FILE="+pwFile),
				LogPath: filepath.Join(confDir, svc+".log"), RegisterTimeout: time.Minute,
			})
			if err != nil {
				errs <- err
				return
			}
			procs <- p
		})
	}
	starting.Wait()
	close(procs)
	close(errs)
	for p := range procs {
		t.Cleanup(func() {
			_ = p.Stop(15 * time.Second)
			if t.Failed() {
				t.Logf("--- %s log (last lines) ---\n%s", p.Service, p.Tail(30))
			}
		})
	}
	for err := range errs {
		t.Fatal(err)
	}
	alice := connect(t, srv.NATS.URL(), "alice", "alice-pw", "_INBOX_alice", nats.RootCAs(certs.CA))
	results := newResultLog(t, alice)
	for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
		if res := results.run(t, alice, cmd, 10*time.Second); res == nil || res.Status != contract.StatusSucceeded {
			t.Fatalf("%s before the rotation: %+v", cmd, res)
		}
	}
	t.Logf("four services up over TLS, first commands succeeded: %s", time.Since(began).Round(time.Millisecond))

	// Commands all the while: each acked one must get its result.
	stop := make(chan struct{})
	var acked []string
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cmd := []contract.Command{contract.CmdPause, contract.CmdResume}[i%2]
			if id := results.send(alice, cmd, 5*time.Second); id != "" {
				acked = append(acked, id)
			}
		}
	})

	// The rotation. A new CA and a server certificate it signs; the
	// clients' bundle gets the new CA first.
	rotated := time.Now()
	newCerts, err := localstack.GenerateTLS(filepath.Join(t.TempDir(), "new"))
	if err != nil {
		t.Fatal(err)
	}
	writeSecret(t, clientCA, string(readFile(t, certs.CA))+string(readFile(t, newCerts.CA)))
	copyFile(t, newCerts.Server.CertFile, certs.Server.CertFile)
	copyFile(t, newCerts.Server.KeyFile, certs.Server.KeyFile)
	// New passwords: the services' files first, then the server.
	for svc, f := range pwFiles {
		pw[passwordVar(svc)] = passwords[passwordVar(svc)] + "-rotated"
		writeSecret(t, f, pw[passwordVar(svc)])
	}
	writeInlineConf(t, confDir, pw)
	if err := srv.NATS.Reload(); err != nil {
		t.Fatal(err)
	}
	// Every service connection is a new one, made after the reload.
	testenv.WaitFor(t, 60*time.Second, "every service reconnected after the rotation", func() bool {
		return reconnectedSince(t, srv.NATS, rotated, pwFiles)
	})
	testenv.WaitFor(t, 30*time.Second, "every service answering $SRV.PING", func() bool {
		for svc := range pwFiles {
			if len(localstack.ServiceInstances(admin, svc)) == 0 {
				return false
			}
		}
		return true
	})
	took := time.Since(rotated)
	close(stop)
	wg.Wait()
	for _, cmd := range []contract.Command{contract.CmdPause, contract.CmdResume} {
		if res := results.run(t, alice, cmd, 30*time.Second); res == nil || res.Status != contract.StatusSucceeded {
			t.Fatalf("%s after the rotation: %+v", cmd, res)
		}
	}
	for _, id := range acked {
		if res := results.wait(id, 30*time.Second); res == nil {
			t.Errorf("command %s was acked during the rotation but got no result", id)
		}
	}
	// The server now serves the new certificate: the old CA alone no
	// longer verifies it, the new one does; the old passwords are refused.
	if nc, err := nats.Connect(srv.NATS.URL(), nats.UserInfo("admin", "admin-pw"), nats.RootCAs(certs.CA)); err == nil {
		nc.Close()
		t.Error("a client trusting only the old CA connected after the rotation")
	}
	if nc, err := nats.Connect(srv.NATS.URL(), nats.UserInfo("admin", "admin-pw"), nats.RootCAs(newCerts.CA)); err != nil {
		t.Errorf("a client trusting the new CA: %v", err)
	} else {
		nc.Close()
	}
	if nc, err := nats.Connect(srv.NATS.URL(), nats.UserInfo("vigil-control", "control-pw"), nats.RootCAs(newCerts.CA)); err == nil {
		nc.Close()
		t.Error("the old vigil-control password still works")
	}
	t.Logf("rotation: services back %s after the reload; %d commands acked during it, each with its result; whole test %s",
		took.Round(time.Millisecond), len(acked), time.Since(began).Round(time.Millisecond))
}

// reconnectedSince reports whether every service user's connections were
// all made after since (the old ones were closed by the reload).
func reconnectedSince(t *testing.T, srv *localstack.NATS, since time.Time, users map[string]string) bool {
	t.Helper()
	cz, err := srv.Connz(&natsserver.ConnzOptions{Username: true, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, c := range cz.Conns {
		if _, ok := users[c.AuthorizedUser]; !ok {
			continue
		}
		if c.Start.Before(since) {
			return false
		}
		if c.TLSVersion == "" {
			t.Fatalf("%s connected without TLS", c.AuthorizedUser)
		}
		seen[c.AuthorizedUser] = true
	}
	return len(seen) == len(users)
}

// resultLog collects alice's results by command id.
type resultLog struct {
	mu      sync.Mutex
	results map[string]contract.Result
}

func newResultLog(t *testing.T, alice *client) *resultLog {
	t.Helper()
	l := &resultLog{results: map[string]contract.Result{}}
	_, err := alice.Subscribe("vigil.result.alice.>", func(m *nats.Msg) {
		var res contract.Result
		if json.Unmarshal(m.Data, &res) == nil {
			l.mu.Lock()
			l.results[res.ID] = res
			l.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Flush(); err != nil {
		t.Fatal(err)
	}
	return l
}

// send sends cmd and returns its id when it was acked (empty when not:
// an operator would send it again).
func (l *resultLog) send(alice *client, cmd contract.Command, timeout time.Duration) string {
	reply, err := alice.Request(contract.CommandSubject("alice", cmd), []byte(`{}`), timeout)
	if err != nil {
		return ""
	}
	var ack contract.Ack
	if json.Unmarshal(reply.Data, &ack) != nil || !ack.Accepted {
		return ""
	}
	return ack.ID
}

// wait waits for the result of command id.
func (l *resultLog) wait(id string, timeout time.Duration) *contract.Result {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		res, ok := l.results[id]
		l.mu.Unlock()
		if ok {
			return &res
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// run sends cmd and waits for its result.
// The command is sent again until it is acked: vigil-control answers
// $SRV.PING (which StartService waits for) a moment before its command
// endpoint exists, and a request in between has no responders.
func (l *resultLog) run(t *testing.T, alice *client, cmd contract.Command, timeout time.Duration) *contract.Result {
	t.Helper()
	var id string
	testenv.WaitFor(t, 60*time.Second, string(cmd)+" acked", func() bool {
		id = l.send(alice, cmd, 10*time.Second)
		return id != ""
	})
	return l.wait(id, timeout)
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// copyFile replaces to with from's content (through a rename).
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	writeSecret(t, to, string(readFile(t, from)))
}

// writeSecret writes a file (0600) through a temporary file and a rename.
func writeSecret(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}
