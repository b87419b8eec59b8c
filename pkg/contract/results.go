package contract

// IndicatorsSeriesResult is vigil-indicators' answer to pause, resume and
// forget from one instance: Owner is true when the instance ran (pause,
// forget) or runs (resume) some of the user's series.
type IndicatorsSeriesResult struct {
	OwnerReply
	// Series counts those series.
	Series int `json:"series"`
	// Warming counts the resumed series with an indicator still warming.
	Warming int `json:"warming,omitempty"`
}

// IndicatorsChange is what converging one instance's series of a user to
// a new desired state did.
type IndicatorsChange struct {
	// Series is how many of the user's series (candle and order book)
	// this instance runs afterwards.
	Series int `json:"series"`
	// Warming is how many of those have an indicator still warming up.
	Warming int `json:"warming"`
	// Added, Removed and Recomputed count series built, dropped, and
	// rebuilt for new parameters.
	Added      int `json:"added"`
	Removed    int `json:"removed"`
	Recomputed int `json:"recomputed"`
}

// IndicatorsApplyResult is vigil-indicators' answer to apply from one
// instance: Owner is true when it runs or ran some of the user's series.
type IndicatorsApplyResult struct {
	OwnerReply
	IndicatorsChange
}

// IndicatorsRecomputeResult is vigil-indicators' answer to recompute:
// Owner is true on the instance that owns the series.
type IndicatorsRecomputeResult struct {
	OwnerReply
	// Bars is the number of candles the series was rebuilt from.
	Bars int `json:"bars"`
}

// The status of an AlertsVerbResult.
const (
	AlertsPaused         = "paused"
	AlertsAlreadyPaused  = "already_paused"
	AlertsResumed        = "resumed"
	AlertsAlreadyRunning = "already_running"
	AlertsApplied        = "applied"
)

// AlertsVerbResult is vigil-alerts' answer to pause, resume or apply for
// one user: OwnerReply{} alone ({"owner":false}) from the instances that
// do not own the user.
type AlertsVerbResult struct {
	OwnerReply
	// Status is one of AlertsPaused ... AlertsApplied.
	Status string `json:"status,omitempty"`
	// Mode, Revision and Rules describe the running rule set (apply).
	Mode     Mode  `json:"mode,omitempty"`
	Revision int64 `json:"revision,omitempty"`
	Rules    *int  `json:"rules,omitempty"`
}
