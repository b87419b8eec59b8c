package redisstore

import (
	"context"
	"encoding/json"
	"fmt"

	"vigil.dev/pkg/contract"
)

// WriteCandlesEach is WriteCandles that reports, for each candle in order,
// whether it was written (its version was newer than the stored one). A
// writer that publishes after storing ("Redis first, then publish") uses it
// to publish exactly the versions that Redis kept. All candles are
// validated before anything is written.
func (s *Store) WriteCandlesEach(ctx context.Context, cs []contract.Candle) ([]bool, error) {
	if len(cs) == 0 {
		return nil, nil
	}
	writes := make([]upsertArgs, len(cs))
	for i, c := range cs {
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("candle %s %d: %w", c.SeriesID, c.Start, err)
		}
		member, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		writes[i] = upsertArgs{contract.CandleKey(c.SeriesID), c.Start, c.Version, member}
	}
	cmds, err := s.upsertMany(ctx, writes)
	if err != nil {
		return nil, fmt.Errorf("write candles: %w", err)
	}
	written := make([]bool, len(cs))
	for i, cmd := range cmds {
		n, _ := cmd.Int()
		written[i] = n == 1
	}
	return written, nil
}
