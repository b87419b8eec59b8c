package ta

import (
	"cmp"
	"fmt"
	"slices"
)

// Side is the side of an order-book level.
type Side uint8

// The sides of a book, named as in Coinbase's level2 channel.
const (
	// Bid is the buy side.
	Bid Side = iota + 1
	// Offer is the sell (ask) side.
	Offer
)

// String returns "bid" or "offer".
func (s Side) String() string {
	switch s {
	case Bid:
		return "bid"
	case Offer:
		return "offer"
	}
	return fmt.Sprintf("side(%d)", uint8(s))
}

// ParseSide returns the Side named s: "bid", or "offer" (also "ask").
func ParseSide(s string) (Side, error) {
	switch s {
	case "bid":
		return Bid, nil
	case "offer", "ask":
		return Offer, nil
	}
	return 0, fmt.Errorf("%w: side %q is not bid or offer", ErrInvalidLevel, s)
}

// Level is one price level of a book update or snapshot: the absolute
// quantity resting at Price on Side. A zero Quantity removes the level.
type Level struct {
	Side     Side
	Price    float64
	Quantity float64
}

// Validate reports a bad side, price (must be in (0, MaxPrice]) or quantity
// (must be finite and not negative), wrapped around ErrInvalidLevel.
func (l Level) Validate() error {
	switch {
	case l.Side != Bid && l.Side != Offer:
		return fmt.Errorf("%w: side %s is not bid or offer", ErrInvalidLevel, l.Side)
	case !validPrice(l.Price):
		return fmt.Errorf("%w: price %v must be a finite number in (0, %g]", ErrInvalidLevel, l.Price, float64(MaxPrice))
	case !validQuantity(l.Quantity):
		return fmt.Errorf("%w: quantity %v must be a finite number >= 0", ErrInvalidLevel, l.Quantity)
	}
	return nil
}

// priceLevel is one resting level of a Book side.
type priceLevel struct {
	price    float64
	quantity float64
}

// Book is a level2 order book. Each side is a slice sorted so that the best
// price is last (bids ascending, offers descending), which makes updates
// near the top of the book cheap and allocation-free once the slices have
// grown. The zero Book is empty and ready to use; it is not safe for
// concurrent use.
type Book struct {
	bids   []priceLevel
	offers []priceLevel
}

// side returns the slice of side s and its ordering: compare(a, b) < 0 when
// a is further from the top of the book than b.
func (b *Book) side(s Side) (*[]priceLevel, func(a, b float64) int) {
	if s == Bid {
		return &b.bids, cmp.Compare[float64]
	}
	return &b.offers, func(a, b float64) int { return cmp.Compare(b, a) }
}

// Snapshot replaces the whole book with levels, which may come in any
// order; a later level for the same side and price wins, and zero
// quantities are skipped. On error the book is unchanged.
func (b *Book) Snapshot(levels []Level) error {
	for _, l := range levels {
		if err := l.Validate(); err != nil {
			return err
		}
	}
	b.bids, b.offers = b.bids[:0], b.offers[:0]
	for _, l := range levels {
		side, _ := b.side(l.Side)
		*side = append(*side, priceLevel{price: l.Price, quantity: l.Quantity})
	}
	for _, s := range [...]Side{Bid, Offer} {
		side, compare := b.side(s)
		byPrice := func(x, y priceLevel) int { return compare(x.price, y.price) }
		slices.SortStableFunc(*side, byPrice)
		// Keep the last level of each price, then drop the empty ones.
		kept := (*side)[:0]
		for i, l := range *side {
			if i+1 < len(*side) && (*side)[i+1].price == l.price {
				continue
			}
			if l.quantity > 0 {
				kept = append(kept, l)
			}
		}
		*side = kept
	}
	return nil
}

// Update sets the quantity at one price level; a zero quantity removes it.
func (b *Book) Update(l Level) error {
	if err := l.Validate(); err != nil {
		return err
	}
	side, compare := b.side(l.Side)
	i, found := slices.BinarySearchFunc(*side, l.Price, func(x priceLevel, p float64) int { return compare(x.price, p) })
	switch {
	case found && l.Quantity == 0:
		*side = slices.Delete(*side, i, i+1)
	case found:
		(*side)[i].quantity = l.Quantity
	case l.Quantity > 0:
		*side = slices.Insert(*side, i, priceLevel{price: l.Price, quantity: l.Quantity})
	}
	return nil
}

// Best returns the best level of side s, or false if the side is empty.
func (b *Book) Best(s Side) (Level, bool) {
	side, _ := b.side(s)
	if len(*side) == 0 {
		return Level{}, false
	}
	top := (*side)[len(*side)-1]
	return Level{Side: s, Price: top.price, Quantity: top.quantity}, true
}

// Len returns the number of levels on side s.
func (b *Book) Len(s Side) int {
	side, _ := b.side(s)
	return len(*side)
}

// BookMetrics describe the top of a book.
type BookMetrics struct {
	// BestBid and BestOffer are the best prices.
	BestBid   float64
	BestOffer float64
	// Mid is (BestBid + BestOffer) / 2.
	Mid float64
	// SpreadBps is (BestOffer - BestBid) / Mid in basis points; it is
	// negative for a crossed book.
	SpreadBps float64
	// BidDepth is the bid quantity at prices >= Mid*(1 - band/10000).
	BidDepth float64
	// OfferDepth is the offer quantity at prices <= Mid*(1 + band/10000).
	OfferDepth float64
	// Imbalance is (BidDepth - OfferDepth) / (BidDepth + OfferDepth), in
	// [-1, 1], and 0 when both depths are 0.
	Imbalance float64
}

// MaxBandBps is the widest band Metrics accepts: 100% of the mid price.
const MaxBandBps = 10_000

// Metrics returns spread, depth and imbalance within bandBps basis points of
// the mid price. It costs O(levels within the band). It returns
// ErrInvalidBand for a band outside [0, MaxBandBps] and ErrBookEmpty when
// a side has no levels.
func (b *Book) Metrics(bandBps float64) (BookMetrics, error) {
	var m BookMetrics
	if !(bandBps >= 0 && bandBps <= MaxBandBps) {
		return m, fmt.Errorf("%w: band %v bps must be in [0, %d]", ErrInvalidBand, bandBps, MaxBandBps)
	}
	bid, okBid := b.Best(Bid)
	offer, okOffer := b.Best(Offer)
	if !okBid || !okOffer {
		return m, fmt.Errorf("%w: %d bids, %d offers", ErrBookEmpty, len(b.bids), len(b.offers))
	}
	m.BestBid, m.BestOffer = bid.Price, offer.Price
	m.Mid = (bid.Price + offer.Price) / 2
	m.SpreadBps = (offer.Price - bid.Price) / m.Mid * 10_000
	lowest := m.Mid * (1 - bandBps/10_000)
	for i := len(b.bids) - 1; i >= 0 && b.bids[i].price >= lowest; i-- {
		m.BidDepth += b.bids[i].quantity
	}
	highest := m.Mid * (1 + bandBps/10_000)
	for i := len(b.offers) - 1; i >= 0 && b.offers[i].price <= highest; i-- {
		m.OfferDepth += b.offers[i].quantity
	}
	if total := m.BidDepth + m.OfferDepth; total > 0 {
		m.Imbalance = (m.BidDepth - m.OfferDepth) / total
	}
	return m, nil
}
