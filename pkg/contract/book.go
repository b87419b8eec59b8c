package contract

import (
	"fmt"
	"math"
	"time"
)

// MaxBookLevels bounds the levels per side of one BookSnapshot.
const MaxBookLevels = 1000

// BookLevel is one order-book level as [price, quantity]; in JSON a
// two-element array.
type BookLevel [2]float64

// Price is the level's price.
func (l BookLevel) Price() float64 { return l[0] }

// Quantity is the absolute quantity resting at the level's price.
func (l BookLevel) Quantity() float64 { return l[1] }

// BookSnapshot is the top of one product's level2 order book, published by
// the feed on vigil.book.<user>.<exchange>.<symbol> (core NATS, see
// BookSubject) while the user is in the scalper-orderbook mode. Every
// message is a full, absolute snapshot of the top levels of both sides, so a
// consumer needs no sequencing or replay: the latest message is the book,
// and a lost message costs only that update.
type BookSnapshot struct {
	User       string `json:"user"`
	ExchangeID int64  `json:"exchange_id"`
	Symbol     string `json:"symbol"`
	// Time is when the feed observed this state of the book (exchange
	// event time when it has one).
	Time time.Time `json:"time"`
	// Bids and Asks are the top levels of each side, best price first.
	Bids []BookLevel `json:"bids"`
	Asks []BookLevel `json:"asks"`
}

// Validate checks the identity, time and levels of a snapshot: prices
// positive and finite, quantities finite and not negative, at most
// MaxBookLevels per side.
func (b BookSnapshot) Validate() error {
	var f fieldErrs
	f.check("user", ValidateUserToken(b.User))
	f.check("exchange_id", ValidateID("exchange_id", b.ExchangeID))
	f.check("symbol", ValidateSymbol(b.Symbol))
	if b.Time.IsZero() {
		f.add("time", "is required")
	}
	for _, side := range []struct {
		name   string
		levels []BookLevel
	}{{"bids", b.Bids}, {"asks", b.Asks}} {
		if len(side.levels) > MaxBookLevels {
			f.add(side.name, "has %d levels, the limit is %d", len(side.levels), MaxBookLevels)
			continue
		}
		for i, l := range side.levels {
			field := fmt.Sprintf("%s[%d]", side.name, i)
			if !(l.Price() > 0) || math.IsInf(l.Price(), 0) {
				f.add(field, "price %v must be a finite number above 0", l.Price())
			}
			if !(l.Quantity() >= 0) || math.IsInf(l.Quantity(), 0) {
				f.add(field, "quantity %v must be a finite number >= 0", l.Quantity())
			}
		}
	}
	return f.err()
}
