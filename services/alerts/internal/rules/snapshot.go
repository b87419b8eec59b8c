package rules

// Snapshot is the engine's memory in a JSON-able form, keyed by rule id, so
// the service can persist it (for example in a NATS KV bucket) and another
// instance can continue where this one stopped.
type Snapshot struct {
	Rules map[string]RuleMemory `json:"rules"`
}

// RuleMemory is what the engine remembers about one rule.
type RuleMemory struct {
	// Definition fingerprints the rule definition the memory belongs to;
	// remembered values are used only by a rule with the same definition.
	Definition string `json:"definition"`
	// Last is the last closed bar seen and Before the one seen before it;
	// a zero Start means none.
	Last   BarValues `json:"last,omitzero"`
	Before BarValues `json:"before,omitzero"`
	// LastFiredBar is the start (UNIX seconds) of the last bar the rule
	// fired for, 0 when it never fired.
	LastFiredBar int64 `json:"last_fired_bar,omitempty"`
}

// BarValues are a rule's inputs at one closed bar.
type BarValues struct {
	// Start is the bar's start in UNIX seconds.
	Start int64 `json:"start"`
	// Version is the version of the update the values came from.
	Version int64 `json:"version"`
	// Value is the rule's series value.
	Value float64 `json:"value"`
	// Other is the Other series value of a cross rule.
	Other float64 `json:"other,omitempty"`
}

// Snapshot copies the memory of every current rule.
func (e *Engine) Snapshot() Snapshot {
	e.mu.Lock()
	defer e.mu.Unlock()
	snap := Snapshot{Rules: make(map[string]RuleMemory, len(e.rules))}
	for _, s := range e.rules {
		snap.Rules[s.rule.ID] = s.mem
	}
	return snap
}

// Restore sets the memory of every current rule from snap: a rule with
// the same id and definition takes all of its memory, a rule whose
// definition differs only its fired-bar memory (as in Replace), and a rule
// absent from snap starts empty. Memories of rules the engine does not have
// are ignored.
func (e *Engine) Restore(snap Snapshot) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, s := range e.rules {
		s.mem = RuleMemory{Definition: s.mem.Definition}
		if prev, ok := snap.Rules[s.rule.ID]; ok {
			s.adopt(prev)
		}
	}
}
