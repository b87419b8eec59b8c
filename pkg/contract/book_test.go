package contract

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestBookSnapshotJSON(t *testing.T) {
	doc := `{"user":"alice","exchange_id":3,"symbol":"BTC-USD","time":"2026-11-01T12:00:01.5Z",` +
		`"bids":[[100,1.5],[99.5,2]],"asks":[[100.5,0.25]]}`
	b, err := DecodeStrict[BookSnapshot]([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Validate(); err != nil {
		t.Fatal(err)
	}
	if b.Bids[1].Price() != 99.5 || b.Bids[1].Quantity() != 2 || b.Asks[0] != (BookLevel{100.5, 0.25}) {
		t.Fatalf("levels %+v %+v", b.Bids, b.Asks)
	}
	out, err := json.Marshal(b)
	if err != nil || !strings.Contains(string(out), `"bids":[[100,1.5],[99.5,2]]`) {
		t.Fatalf("marshal: %s %v", out, err)
	}
}

func TestBookSnapshotValidate(t *testing.T) {
	valid := func() BookSnapshot {
		return BookSnapshot{User: "alice", ExchangeID: 3, Symbol: "BTC-USD", Time: time.Unix(1_700_000_000, 0),
			Bids: []BookLevel{{100, 1}}, Asks: []BookLevel{{101, 1}}}
	}
	tests := []struct {
		name      string
		change    func(*BookSnapshot)
		wantField string
	}{
		{"valid", func(*BookSnapshot) {}, ""},
		{"empty sides", func(b *BookSnapshot) { b.Bids, b.Asks = nil, nil }, ""},
		{"bad user", func(b *BookSnapshot) { b.User = "a.b" }, "user"},
		{"no exchange", func(b *BookSnapshot) { b.ExchangeID = 0 }, "exchange_id"},
		{"bad symbol", func(b *BookSnapshot) { b.Symbol = "BTC-*" }, "symbol"},
		{"no time", func(b *BookSnapshot) { b.Time = time.Time{} }, "time"},
		{"zero price", func(b *BookSnapshot) { b.Bids[0][0] = 0 }, "bids[0]"},
		{"NaN quantity", func(b *BookSnapshot) { b.Asks[0][1] = math.NaN() }, "asks[0]"},
		{"negative quantity", func(b *BookSnapshot) { b.Asks[0][1] = -1 }, "asks[0]"},
		{"infinite price", func(b *BookSnapshot) { b.Asks[0][0] = math.Inf(1) }, "asks[0]"},
		{"too many levels", func(b *BookSnapshot) { b.Bids = make([]BookLevel, MaxBookLevels+1) }, "bids"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := valid()
			tt.change(&b)
			err := b.Validate()
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("want ErrInvalid, got %v", err)
			}
			found := false
			for _, fe := range ErrorFrom(err, CodeInternal).Fields {
				found = found || fe.Field == tt.wantField
			}
			if !found {
				t.Fatalf("%v does not name %q", err, tt.wantField)
			}
		})
	}
}
