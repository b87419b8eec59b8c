package ta

import (
	"errors"
	"math"
	"strings"
	"testing"
)

// handBook is the snapshot of the book tests, deliberately unsorted and with
// a repeated price (the later quantity wins) and an empty level.
var handBook = []Level{
	{Offer, 101, 4}, {Bid, 99.9, 2}, {Offer, 100.1, 1.5}, {Bid, 98, 10},
	{Bid, 100, 1}, {Offer, 103, 7}, {Bid, 99.5, 1}, {Offer, 100.2, 0.5},
	{Bid, 99.5, 3}, {Offer, 105, 0},
}

func newHandBook(t *testing.T) *Book {
	t.Helper()
	var b Book
	if err := b.Snapshot(handBook); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return &b
}

func approxEqual(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func checkMetrics(t *testing.T, got, want BookMetrics) {
	t.Helper()
	pairs := [...][2]float64{
		{got.BestBid, want.BestBid}, {got.BestOffer, want.BestOffer}, {got.Mid, want.Mid},
		{got.SpreadBps, want.SpreadBps}, {got.BidDepth, want.BidDepth},
		{got.OfferDepth, want.OfferDepth}, {got.Imbalance, want.Imbalance},
	}
	for _, p := range pairs {
		if !approxEqual(p[0], p[1]) {
			t.Fatalf("Metrics = %+v\nwant      %+v", got, want)
		}
	}
}

func TestBookMetrics(t *testing.T) {
	const mid, spread = 100.05, 0.1 / 100.05 * 10_000
	top := BookMetrics{BestBid: 100, BestOffer: 100.1, Mid: mid, SpreadBps: spread}
	with := func(bid, offer, imbalance float64) BookMetrics {
		m := top
		m.BidDepth, m.OfferDepth, m.Imbalance = bid, offer, imbalance
		return m
	}
	tests := []struct {
		name string
		band float64
		want BookMetrics
	}{
		// 100.05 ± 0.1% is [99.94995, 100.15005].
		{"10 bps", 10, with(1, 1.5, -0.2)},
		// ± 0.6% is [99.4497, 100.6503].
		{"60 bps", 60, with(6, 2, 0.5)},
		{"zero band holds nothing", 0, with(0, 0, 0)},
		{"whole book", MaxBandBps, with(16, 13, 3.0/29)},
	}
	b := newHandBook(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := b.Metrics(tt.band)
			if err != nil {
				t.Fatalf("Metrics: %v", err)
			}
			checkMetrics(t, got, tt.want)
		})
	}
	if b.Len(Bid) != 4 || b.Len(Offer) != 4 {
		t.Fatalf("Len = %d bids, %d offers; want 4 and 4 (duplicate merged, empty level skipped)", b.Len(Bid), b.Len(Offer))
	}
}

func TestBookUpdate(t *testing.T) {
	tests := []struct {
		name    string
		updates []Level
		band    float64
		want    BookMetrics
	}{
		{
			name:    "new quantity at the best offer",
			updates: []Level{{Offer, 100.1, 3}},
			band:    10,
			want:    BookMetrics{BestBid: 100, BestOffer: 100.1, Mid: 100.05, SpreadBps: 0.1 / 100.05 * 1e4, BidDepth: 1, OfferDepth: 3, Imbalance: -0.5},
		},
		{
			name:    "best bid removed",
			updates: []Level{{Bid, 100, 0}},
			band:    10,
			// mid 100.0 ± 0.1%: bid 99.9 is inside, offer 100.1 is inside.
			want: BookMetrics{BestBid: 99.9, BestOffer: 100.1, Mid: 100, SpreadBps: 20, BidDepth: 2, OfferDepth: 1.5, Imbalance: 0.5 / 3.5},
		},
		{
			name:    "levels inserted inside the spread",
			updates: []Level{{Bid, 100.02, 4}, {Offer, 100.06, 1}},
			band:    1,
			// mid 100.04 ± 0.01% is [100.029996, 100.050004]: both tops lie outside.
			want: BookMetrics{BestBid: 100.02, BestOffer: 100.06, Mid: 100.04, SpreadBps: 0.04 / 100.04 * 1e4},
		},
		{
			name:    "levels inserted inside the spread, wider band",
			updates: []Level{{Bid, 100.02, 4}, {Offer, 100.06, 1}},
			band:    5,
			// ± 0.05%: [99.98998, 100.09002] holds bids 100.02, 100 and offer 100.06.
			want: BookMetrics{BestBid: 100.02, BestOffer: 100.06, Mid: 100.04, SpreadBps: 0.04 / 100.04 * 1e4, BidDepth: 5, OfferDepth: 1, Imbalance: 4.0 / 6},
		},
		{
			name:    "removing an absent level changes nothing",
			updates: []Level{{Bid, 42, 0}, {Offer, 1000, 0}},
			band:    MaxBandBps,
			want:    BookMetrics{BestBid: 100, BestOffer: 100.1, Mid: 100.05, SpreadBps: 0.1 / 100.05 * 1e4, BidDepth: 16, OfferDepth: 13, Imbalance: 3.0 / 29},
		},
		{
			name:    "crossed book",
			updates: []Level{{Bid, 100.3, 1}},
			band:    MaxBandBps,
			want:    BookMetrics{BestBid: 100.3, BestOffer: 100.1, Mid: 100.2, SpreadBps: -0.2 / 100.2 * 1e4, BidDepth: 17, OfferDepth: 13, Imbalance: 4.0 / 30},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newHandBook(t)
			for _, u := range tt.updates {
				if err := b.Update(u); err != nil {
					t.Fatalf("Update(%+v): %v", u, err)
				}
			}
			got, err := b.Metrics(tt.band)
			if err != nil {
				t.Fatalf("Metrics: %v", err)
			}
			checkMetrics(t, got, tt.want)
		})
	}
}

func TestBookOrdering(t *testing.T) {
	var b Book
	prices := []float64{5, 1, 9, 3, 7, 2, 8}
	for _, p := range prices {
		if err := b.Update(Level{Bid, p, p}); err != nil {
			t.Fatalf("Update: %v", err)
		}
		if err := b.Update(Level{Offer, p + 10, p}); err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	// Remove the best levels one by one: each time the next best appears.
	for _, want := range []float64{9, 8, 7, 5, 3, 2, 1} {
		bid, ok := b.Best(Bid)
		if !ok || bid.Price != want || bid.Quantity != want || bid.Side != Bid {
			t.Fatalf("Best(Bid) = %+v, %v; want price %v", bid, ok, want)
		}
		if err := b.Update(Level{Bid, want, 0}); err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	for _, want := range []float64{11, 12, 13, 15, 17, 18, 19} {
		offer, ok := b.Best(Offer)
		if !ok || offer.Price != want {
			t.Fatalf("Best(Offer) = %+v, %v; want price %v", offer, ok, want)
		}
		if err := b.Update(Level{Offer, want, 0}); err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	if _, ok := b.Best(Bid); ok {
		t.Fatalf("Best(Bid) of an emptied side reports a level")
	}
}

func TestBookRejects(t *testing.T) {
	levelTests := []struct {
		name    string
		level   Level
		wantMsg string
	}{
		{"no side", Level{0, 100, 1}, "side side(0)"},
		{"zero price", Level{Bid, 0, 1}, "price 0"},
		{"NaN price", Level{Offer, math.NaN(), 1}, "price NaN"},
		{"price too large", Level{Offer, 2 * MaxPrice, 1}, "price 2e+15"},
		{"negative quantity", Level{Bid, 100, -1}, "quantity -1"},
		{"infinite quantity", Level{Bid, 100, math.Inf(1)}, "quantity +Inf"},
	}
	for _, tt := range levelTests {
		t.Run(tt.name, func(t *testing.T) {
			b := newHandBook(t)
			if err := b.Update(tt.level); !errors.Is(err, ErrInvalidLevel) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("Update = %v, want ErrInvalidLevel containing %q", err, tt.wantMsg)
			}
			if err := b.Snapshot(append([]Level{{Bid, 1, 1}}, tt.level)); !errors.Is(err, ErrInvalidLevel) {
				t.Fatalf("Snapshot = %v, want ErrInvalidLevel", err)
			}
			if b.Len(Bid) != 4 || b.Len(Offer) != 4 {
				t.Fatalf("a rejected level changed the book")
			}
		})
	}

	b := newHandBook(t)
	for _, band := range []float64{-1, math.NaN(), MaxBandBps + 1} {
		if _, err := b.Metrics(band); !errors.Is(err, ErrInvalidBand) {
			t.Errorf("Metrics(%v) = %v, want ErrInvalidBand", band, err)
		}
	}
	var empty Book
	if _, err := empty.Metrics(10); !errors.Is(err, ErrBookEmpty) {
		t.Errorf("Metrics of an empty book = %v, want ErrBookEmpty", err)
	}
	if err := empty.Update(Level{Bid, 100, 1}); err != nil {
		t.Fatalf("Update: %v", err)
	}
	if _, err := empty.Metrics(10); !errors.Is(err, ErrBookEmpty) || !strings.Contains(err.Error(), "1 bids, 0 offers") {
		t.Errorf("Metrics of a book without offers = %v, want ErrBookEmpty", err)
	}
}

func TestParseSide(t *testing.T) {
	tests := []struct {
		in      string
		want    Side
		wantErr error
	}{{"bid", Bid, nil}, {"offer", Offer, nil}, {"ask", Offer, nil}, {"BID", 0, ErrInvalidLevel}, {"", 0, ErrInvalidLevel}}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSide(tt.in)
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseSide(%q) = %v, %v; want %v, %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
	if Bid.String() != "bid" || Offer.String() != "offer" {
		t.Fatalf("String() = %q, %q; want bid, offer", Bid, Offer)
	}
}

func TestBookUpdateDoesNotAllocate(t *testing.T) {
	b := newHandBook(t)
	quantity := 1.0
	allocs := testing.AllocsPerRun(1000, func() {
		quantity += 0.5
		// Change, insert and remove levels near the top of the book.
		for _, l := range []Level{{Offer, 100.1, quantity}, {Bid, 100.01, quantity}, {Bid, 100.01, 0}} {
			if err := b.Update(l); err != nil {
				t.Fatalf("Update: %v", err)
			}
		}
		if _, err := b.Metrics(25); err != nil {
			t.Fatalf("Metrics: %v", err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per update cycle, want 0", allocs)
	}
}
