// Package health tells process supervisors and load balancers whether a
// service instance is alive and ready: an HTTP endpoint (/livez, /readyz)
// and, under systemd, sd_notify (READY=1 once ready, WATCHDOG=1 while the
// instance is not wedged), so that a unit with WatchdogSec restarts an
// instance whose checks stop completing.
//
// Ready means every registered check (NATS connected, Redis answering, the
// consumer running, ...) passed in the latest round. Alive means the check
// loop still completes rounds and every liveness check (AddLive: things a
// restart fixes, such as a NATS connection closed for good) passed. An
// instance that is alive but not ready is waiting for a dependency:
// restarting it would not help, so the watchdog keeps being fed.
package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Check reports nil when the part it checks can do its work.
type Check func(ctx context.Context) error

// CheckTimeout bounds one check in a round; a check that does not return
// within it fails ("timed out").
const CheckTimeout = 2 * time.Second

// DefaultInterval is how often Run checks.
const DefaultInterval = time.Second

// Report is the outcome of the latest round, as /readyz serves it.
type Report struct {
	// Ready is true when every check passed.
	Ready bool `json:"ready"`
	// Alive is false when a liveness check failed.
	Alive bool `json:"alive"`
	// Checks maps each check to "ok" or the reason it failed.
	Checks map[string]string `json:"checks"`
	// At is when the round ended.
	At time.Time `json:"at"`
}

// Health holds an instance's checks and the latest round's outcome.
type Health struct {
	log *slog.Logger

	mu     sync.Mutex
	checks map[string]check
	last   Report
	routes map[string]http.Handler
}

// check is a registered Check and whether its failure means the instance
// is wedged (liveness) rather than waiting (readiness), or only degraded.
type check struct {
	run      Check
	live     bool
	degraded bool
}

// New returns a Health without checks, not ready until its first round.
func New(log *slog.Logger) *Health {
	return &Health{log: log, checks: map[string]check{}, last: Report{Checks: map[string]string{}}, routes: map[string]http.Handler{}}
}

// Route serves handler on the health endpoint under path (GET), beside
// /livez and /readyz: e.g. /metrics for Prometheus. Routes added after
// Serve or Handler are not served.
func (h *Health) Route(path string, handler http.Handler) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.routes[path] = handler
}

// paths lists the endpoint's paths, for the log.
func (h *Health) paths() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := []string{"/livez", "/readyz"}
	for path := range h.routes {
		out = append(out, path)
	}
	sort.Strings(out[2:])
	return strings.Join(out, " ")
}

// Add registers a readiness check under name (replacing one of the same
// name): while it fails the instance is not ready.
func (h *Health) Add(name string, c Check) { h.add(name, check{run: c}) }

// AddLive registers a liveness check under name: while it fails the
// instance is neither ready nor alive, so systemd's watchdog restarts it.
func (h *Health) AddLive(name string, c Check) { h.add(name, check{run: c, live: true}) }

// AddDegraded registers a check of a dependency the instance works
// without, for a while or in part (a database that only holds a
// projection): while it fails the report shows "degraded: <reason>" under
// name, and the instance stays ready and alive.
func (h *Health) AddDegraded(name string, c Check) { h.add(name, check{run: c, degraded: true}) }

func (h *Health) add(name string, c check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks[name] = c
}

// Latest returns the outcome of the latest round.
func (h *Health) Latest() Report {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last
}

// Round runs every check concurrently, each bounded by CheckTimeout, stores
// and returns the outcome.
func (h *Health) Round(ctx context.Context) Report {
	h.mu.Lock()
	checks := make(map[string]check, len(h.checks))
	for name, c := range h.checks {
		checks[name] = c
	}
	h.mu.Unlock()

	r := Report{Ready: true, Alive: true, Checks: make(map[string]string, len(checks))}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for name, c := range checks {
		wg.Go(func() {
			status := "ok"
			if err := runCheck(ctx, c.run); err != nil {
				status = err.Error()
			}
			mu.Lock()
			defer mu.Unlock()
			if c.degraded && status != "ok" {
				r.Checks[name] = "degraded: " + status
				return
			}
			r.Checks[name] = status
			if status != "ok" {
				r.Ready = false
				r.Alive = r.Alive && !c.live
			}
		})
	}
	wg.Wait()
	r.At = time.Now()

	h.mu.Lock()
	prev := h.last
	h.last = r
	h.mu.Unlock()
	if prev.Ready != r.Ready || prev.Alive != r.Alive || prev.At.IsZero() {
		h.log.Info("health changed", "ready", r.Ready, "alive", r.Alive, "checks", r.Checks)
	}
	return r
}

// runCheck runs check under CheckTimeout; a check that ignores its context
// is abandoned when the timeout passes.
func runCheck(ctx context.Context, check Check) error {
	ctx, cancel := context.WithTimeout(ctx, CheckTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- check(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return errors.New("timed out")
	}
}

// Run checks every interval (DefaultInterval when 0) until ctx ends. Under
// systemd (NOTIFY_SOCKET set) it sends READY=1 after the first ready round
// and, when the unit has WatchdogSec, WATCHDOG=1 after every round in
// which the instance is alive, and STATUS= with the failing checks.
func (h *Health) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	watchdog, _ := daemon.SdWatchdogEnabled(false)
	if watchdog > 0 && watchdog/2 < interval {
		interval = watchdog / 2
	}
	notifiedReady := false
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		r := h.Round(ctx)
		if r.Ready && !notifiedReady {
			notifiedReady = notify(h.log, daemon.SdNotifyReady)
		}
		notify(h.log, "STATUS="+r.status())
		if watchdog > 0 && r.Alive {
			notify(h.log, daemon.SdNotifyWatchdog)
		}
		select {
		case <-ctx.Done():
			notify(h.log, daemon.SdNotifyStopping)
			return
		case <-tick.C:
		}
	}
}

// status is a one-line summary for systemd's STATUS=.
func (r Report) status() string {
	if r.Ready {
		return "ready"
	}
	names := make([]string, 0, len(r.Checks))
	for name, s := range r.Checks {
		if s != "ok" {
			names = append(names, name+": "+s)
		}
	}
	sort.Strings(names)
	return fmt.Sprintf("not ready: %v", names)
}

// notify sends state to systemd when NOTIFY_SOCKET is set and reports
// whether it was sent.
func notify(log *slog.Logger, state string) bool {
	sent, err := daemon.SdNotify(false, state)
	if err != nil {
		log.Warn("sd_notify failed", "state", state, "err", err)
	}
	return sent
}

// Handler serves /livez (200 while the check loop completed a round within
// stale in which the instance was alive) and /readyz (200 with the latest Report when ready, 503 with it
// otherwise, or when the latest round is older than stale), and the
// paths added with Route.
func (h *Health) Handler(stale time.Duration) http.Handler {
	mux := http.NewServeMux()
	h.mu.Lock()
	for path, handler := range h.routes {
		mux.Handle("GET "+path, handler)
	}
	h.mu.Unlock()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		r := h.Latest()
		if r.At.IsZero() || time.Since(r.At) > stale {
			http.Error(w, "check loop has not completed a round for "+stale.String(), http.StatusServiceUnavailable)
			return
		}
		if !r.Alive {
			http.Error(w, r.status(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		r := h.Latest()
		code := http.StatusOK
		if !r.Ready || time.Since(r.At) > stale {
			code = http.StatusServiceUnavailable
			r.Ready = false
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(r)
	})
	return mux
}

// Serve runs the checks (Run) and, when addr is not empty, the HTTP
// endpoint on addr until ctx ends. It returns the address it listens on
// ("" without addr) once listening.
func (h *Health) Serve(ctx context.Context, addr string) (string, error) {
	go h.Run(ctx, DefaultInterval)
	if addr == "" {
		return "", nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("VIGIL_HEALTH_ADDR %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h.Handler(5 * DefaultInterval), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			h.log.Error("health endpoint stopped", "err", err)
		}
	}()
	h.log.Info("health endpoint listening", "addr", l.Addr().String(), "paths", h.paths())
	return l.Addr().String(), nil
}
