package contract

import "time"

// OwnerReply is the part of every per-user verb result that says whether
// the answering instance owns the user. An instance that does not own
// the user answers OwnerReply{} alone: {"owner":false}.
type OwnerReply struct {
	Owner bool `json:"owner"`
}

// GapFill counts, per symbol and timeframe, the candles a gap fill wrote.
type GapFill map[string]map[Timeframe]int

// FeedPauseResult is vigil-feed's answer to pause from the user's owner:
// it stopped the user's subscriptions and jobs.
type FeedPauseResult struct {
	OwnerReply
	Paused  bool     `json:"paused"`
	Symbols []string `json:"symbols"`
}

// FeedResumeResult is vigil-feed's answer to resume from the user's
// owner, sent once the gap since the last stored candles is filled.
type FeedResumeResult struct {
	OwnerReply
	Symbols   []string `json:"symbols"`
	GapFilled GapFill  `json:"gap_filled"`
	// GapFillErrors are the parts of the gap fill that failed.
	GapFillErrors []string `json:"gap_fill_errors,omitempty"`
}

// FeedApplyResult is vigil-feed's answer to apply from the user's owner:
// the symbol diff of the new revision and whether the book channel runs.
type FeedApplyResult struct {
	OwnerReply
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
	Symbols []string `json:"symbols"`
	Book    bool     `json:"book"`
	Paused  bool     `json:"paused"`
}

// FeedBackfillResult is vigil-feed's answer to backfill from the user's
// owner: the candles written per timeframe and the pages fetched.
type FeedBackfillResult struct {
	OwnerReply
	Symbol  string            `json:"symbol"`
	Candles map[Timeframe]int `json:"candles"`
	Pages   int               `json:"pages"`
}

// FeedBackfillPlan is vigil-feed's plan of a backfill (vigil.svc.feed.plan
// with verb backfill) from the user's owner: what the backfill would
// take, changing nothing. A force-backfill's dry run adds up Pages,
// Requests and EstimatedSeconds of the owners.
type FeedBackfillPlan struct {
	OwnerReply
	// Pages is the number of history pages, Requests the REST requests
	// they take (one a page, retries not counted).
	Pages    int `json:"pages"`
	Requests int `json:"requests"`
	// RatePerSecond is the source's request limit (0: none) and
	// EstimatedSeconds the time the requests take at it.
	RatePerSecond    float64         `json:"rate_per_second"`
	EstimatedSeconds float64         `json:"estimated_seconds"`
	Ranges           []FeedPlanRange `json:"ranges"`
}

// FeedPlanRange is one timeframe's range of a FeedBackfillPlan.
type FeedPlanRange struct {
	Timeframe Timeframe `json:"tf"`
	From      time.Time `json:"from"`
	To        time.Time `json:"to"`
	Pages     int       `json:"pages"`
}

// FeedCancelResult is vigil-feed's answer to feed.cancel: how far each
// stopped backfill job of the command got. Owner is false on an instance
// that no longer owns the user but may still have stopped a job.
type FeedCancelResult struct {
	OwnerReply
	Stopped []JobProgress `json:"stopped"`
}

// FeedStatus is a vigil-feed instance's answer to status.
type FeedStatus struct {
	Source    string    `json:"source"`
	StartedAt time.Time `json:"started_at"`
	// Members are the live vigil-feed instances as this one sees them.
	Members []string                  `json:"members"`
	Users   map[string]FeedUserStatus `json:"users"`
	// Products, Engine and SourceStatus are the instance's diagnostics
	// (per product freshness, engine counters, the market source's own
	// state); their shape is vigil-feed's and may grow.
	Products     any `json:"products"`
	Engine       any `json:"engine"`
	SourceStatus any `json:"source_status"`
	// LastGapFillMs and MaxGapFillMs are the last and longest gap fill.
	LastGapFillMs int64 `json:"last_gap_fill_ms"`
	MaxGapFillMs  int64 `json:"max_gap_fill_ms"`
}

// FeedUserStatus is one user as a vigil-feed instance runs it.
type FeedUserStatus struct {
	OwnerReply
	// Active is true while the instance subscribes the user's symbols.
	Active     bool     `json:"active"`
	Paused     bool     `json:"paused"`
	Mode       Mode     `json:"mode"`
	Symbols    []string `json:"symbols"`
	Subscribed []string `json:"subscribed"`
	Book       bool     `json:"book"`
	Revision   int64    `json:"revision"`
	// Jobs counts the user's backfill jobs running here.
	Jobs      int                      `json:"jobs"`
	Freshness map[string]FeedFreshness `json:"freshness"`
	// GapFilled is the last finished gap fill; GapFilling is true while
	// one runs.
	GapFilled  GapFill `json:"gap_filled,omitempty"`
	GapFilling bool    `json:"gap_filling,omitempty"`
}

// FeedFreshness is how fresh one subscribed symbol's live data is.
type FeedFreshness struct {
	// LagMs is how long ago live data of the symbol last arrived.
	LagMs int64 `json:"lag_ms"`
	// LastTrade, LastCandle and LastBook are when live data last arrived
	// (wall clock); absent when none did.
	LastTrade  time.Time `json:"last_trade,omitzero"`
	LastCandle time.Time `json:"last_candle,omitzero"`
	LastBook   time.Time `json:"last_book,omitzero"`
	Syncing    bool      `json:"syncing"`
}
