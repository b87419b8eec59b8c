package contract

import "time"

// The status verb's results of vigil-indicators, vigil-alerts and
// vigil-control (vigil-feed's are in feed.go): every instance answers
// vigil.svc.<service>.status with a SvcReply whose Result is one of these;
// a request {"user":"alice"} narrows Users to alice. vigilctl status and
// top decode them.

// IndicatorsStatus is a vigil-indicators instance's answer to status.
type IndicatorsStatus struct {
	// Instance is the instance id (as $SRV.PING reports it), Name its
	// configured name; Members the live instances' ids.
	Instance string   `json:"instance"`
	Name     string   `json:"name"`
	Members  []string `json:"members"`
	// Partitions are the partitions of VIGIL_CANDLES this instance owns.
	Partitions []int `json:"partitions"`
	// Series counts the series this instance runs, Warming those with an
	// indicator still warming up.
	Series  int                             `json:"series"`
	Warming int                             `json:"warming"`
	Users   map[string]IndicatorsUserStatus `json:"users"`
}

// IndicatorsUserStatus is one user as a vigil-indicators instance runs it.
type IndicatorsUserStatus struct {
	Paused   bool  `json:"paused"`
	Mode     Mode  `json:"mode"`
	Revision int64 `json:"revision"`
	// Series counts the user's series this instance runs (candle and
	// order book); Warming those with an indicator still warming up.
	Series  int `json:"series"`
	Warming int `json:"warming"`
	// LastCandle is when this instance last processed a candle of the
	// user; LagMs how long after the candle's observation that was.
	LastCandle *time.Time `json:"last_candle,omitempty"`
	LagMs      float64    `json:"lag_ms,omitempty"`
}

// AlertsStatus is a vigil-alerts instance's answer to status.
type AlertsStatus struct {
	Instance  string    `json:"instance"`
	StartedAt time.Time `json:"started_at"`
	// Members are the live instances of vigil-alerts as this one sees them.
	Members []string `json:"members"`
	// Partitions are the partitions of VIGIL_INDICATORS this instance owns.
	Partitions []int `json:"partitions"`
	// Consumer is this instance's backlog on VIGIL_INDICATORS.
	Consumer *ConsumerBacklog `json:"consumer,omitempty"`
	// Users are the users this instance runs.
	Users map[string]AlertsUserStatus `json:"users"`
	// Webhooks are the webhook deliveries this instance runs, by user.
	Webhooks map[string]WebhookStatus `json:"webhooks,omitempty"`
	// Projection is the backlog of alerts not yet in alert_events (all
	// instances together); nil when the server could not be asked.
	Projection *ConsumerBacklog `json:"projection,omitempty"`
}

// ConsumerBacklog is what a JetStream consumer has not finished.
type ConsumerBacklog struct {
	// Pending messages are not delivered yet; AckPending ones are
	// delivered and not acknowledged yet (in work or waiting for a worker).
	Pending    uint64 `json:"pending"`
	AckPending int    `json:"ack_pending"`
}

// Total is the whole backlog: pending and unacknowledged.
func (b ConsumerBacklog) Total() int64 { return int64(b.Pending) + int64(b.AckPending) }

// AlertsUserStatus is one user as a vigil-alerts instance runs it.
type AlertsUserStatus struct {
	Paused      bool  `json:"paused"`
	Mode        Mode  `json:"mode,omitempty"`
	Revision    int64 `json:"revision"`
	RulesLoaded int   `json:"rules_loaded"`
	// RulesError is why the last desired rule set was rejected.
	RulesError  string `json:"rules_error,omitempty"`
	Evaluations int64  `json:"evaluations"`
	AlertsFired int64  `json:"alerts_fired"`
	// AlertsSuppressed counts alerts over the alerts per minute limit.
	AlertsSuppressed int64      `json:"alerts_suppressed,omitempty"`
	LastEvaluation   *time.Time `json:"last_evaluation,omitempty"`
	// LastBar is the start of the newest bar evaluated.
	LastBar *time.Time `json:"last_bar,omitempty"`
}

// ControlStatus is a vigil-control instance's answer to status.
type ControlStatus struct {
	Instance  string    `json:"instance"`
	StartedAt time.Time `json:"started_at"`
	// Members are the live control instances.
	Members []string `json:"members"`
	// Users are the users with unfinished commands (all of them, or the
	// one asked for), with the instance that owns each.
	Users map[string]ControlUserStatus `json:"users"`
	// RunningHere are the command ids this instance runs, by user.
	RunningHere map[string][]string `json:"running_here"`
}

// ControlUserStatus is a user's command queue and the control instance
// that owns the user.
type ControlUserStatus struct {
	QueueDepth
	Owner string `json:"owner"`
}

// QueueDepth is a user's command queue.
type QueueDepth struct {
	Queued int `json:"queued"`
	// Running is the id of the queued command being executed, or "".
	Running  string `json:"running,omitempty"`
	Executor string `json:"executor,omitempty"`
	Jobs     int    `json:"jobs"`
}
