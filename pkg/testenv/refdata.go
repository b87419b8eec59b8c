package testenv

import (
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
)

// Bar is one row of the reference data: a candle with its UNIX start.
type Bar struct {
	Start                          int64
	Open, High, Low, Close, Volume float64
}

// ReferenceFile is the path of a file of the shared reference data
// (../shared/data/<name> beside the repository), found by walking up from
// the working directory; the test fails when it is not there.
func ReferenceFile(t testing.TB, name string) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		path := filepath.Join(dir, "shared", "data", name)
		if _, err := os.Stat(path); err == nil {
			return path
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("testenv: shared/data/%s not found above %s", name, dir)
		}
		dir = parent
	}
}

// CoinbaseReal is the content of shared/data/coinbase-real/<name>: one
// recorded or documented Coinbase Advanced Trade message (provenance in
// SOURCES.md there), found like ReferenceFile.
func CoinbaseReal(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(ReferenceFile(t, filepath.Join("coinbase-real", name)))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return data
}

// CoinbaseRealFiles are the names of every JSON message in
// shared/data/coinbase-real, sorted.
func CoinbaseRealFiles(t testing.TB) []string {
	t.Helper()
	dir := filepath.Dir(ReferenceFile(t, filepath.Join("coinbase-real", "SOURCES.md")))
	names, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for i, n := range names {
		names[i] = filepath.Base(n)
	}
	return names
}

var btcBars struct {
	once sync.Once
	bars []Bar
	err  error
}

// BTCUSD1h is shared/data/btcusd_1h.csv: 1,975 contiguous hourly BTC/USD
// candles, oldest first, read once per test package.
func BTCUSD1h(t testing.TB) []Bar {
	t.Helper()
	path := ReferenceFile(t, "btcusd_1h.csv")
	btcBars.once.Do(func() { btcBars.bars, btcBars.err = readBars(path) })
	if btcBars.err != nil {
		t.Fatalf("testenv: %v", btcBars.err)
	}
	return btcBars.bars
}

// readBars reads a start,open,high,low,close,volume CSV with a header row.
func readBars(path string) ([]Bar, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(rows) < 2 {
		return nil, errors.New(path + ": no rows")
	}
	bars := make([]Bar, 0, len(rows)-1)
	for n, row := range rows[1:] {
		if len(row) != 6 {
			return nil, fmt.Errorf("%s row %d: %d columns, want 6", path, n+2, len(row))
		}
		start, err := strconv.ParseInt(row[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s row %d: %w", path, n+2, err)
		}
		var v [5]float64
		for i := range v {
			if v[i], err = strconv.ParseFloat(row[i+1], 64); err != nil {
				return nil, fmt.Errorf("%s row %d: %w", path, n+2, err)
			}
		}
		bars = append(bars, Bar{start, v[0], v[1], v[2], v[3], v[4]})
	}
	return bars, nil
}
