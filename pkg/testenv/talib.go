package testenv

import (
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TalibReference is C TA-Lib's output for every bar of BTCUSD1h, from
// shared/data/btcusd_1h.talib.csv and btcusd_1h.talib-params.csv, by
// indicator name as vigil's Redis keys name it (sma_20, macd_12_26_9,
// bb_10_2p5, ...) and then by contract field ("value", "macd", "signal",
// "hist", "upper", "middle", "lower"). An entry is NaN where TA-Lib has no
// value yet. MACD-V's "hist" (line minus signal, not a column of the file)
// is derived from its two columns.
type TalibReference struct {
	// Starts are the bars' starts, as in BTCUSD1h.
	Starts []int64
	// Values holds, per indicator and field, one number per bar.
	Values map[string]map[string][]float64
}

// talibColumns maps the columns of btcusd_1h.talib.csv onto indicator
// names and fields; btcusd_1h.talib-params.csv names its columns
// "<indicator>.<field>" already.
var talibColumns = map[string][2]string{
	"sma20": {"sma_20", "value"}, "ema12": {"ema_12", "value"}, "ema26": {"ema_26", "value"},
	"rsi14": {"rsi_14", "value"}, "atr14": {"atr_14", "value"}, "atr26": {"atr_26", "value"},
	"macd": {"macd_12_26_9", "macd"}, "macd_signal": {"macd_12_26_9", "signal"}, "macd_hist": {"macd_12_26_9", "hist"},
	"bb_upper": {"bb_20_2", "upper"}, "bb_middle": {"bb_20_2", "middle"}, "bb_lower": {"bb_20_2", "lower"},
	"macdv": {"macdv_12_26_9", "macd"}, "macdv_signal": {"macdv_12_26_9", "signal"},
}

var talibRef struct {
	once sync.Once
	ref  TalibReference
	err  error
}

// Talib returns TalibReference, read once per test package. Columns that
// both files hold (macd_12_26_9, atr_26) must agree exactly.
func Talib(t testing.TB) TalibReference {
	t.Helper()
	main, params := ReferenceFile(t, "btcusd_1h.talib.csv"), ReferenceFile(t, "btcusd_1h.talib-params.csv")
	talibRef.once.Do(func() { talibRef.ref, talibRef.err = readTalib(main, params) })
	if talibRef.err != nil {
		t.Fatalf("testenv: %v", talibRef.err)
	}
	return talibRef.ref
}

func readTalib(paths ...string) (TalibReference, error) {
	ref := TalibReference{Values: map[string]map[string][]float64{}}
	for _, path := range paths {
		if err := ref.read(path); err != nil {
			return ref, err
		}
	}
	if v := ref.Values["macdv_12_26_9"]; v != nil {
		hist := make([]float64, len(ref.Starts))
		for i := range hist {
			hist[i] = v["macd"][i] - v["signal"][i]
		}
		v["hist"] = hist
	}
	return ref, nil
}

// read adds the columns of one reference file.
func (ref *TalibReference) read(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return err
	}
	if len(rows) < 2 || len(rows[0]) < 2 || rows[0][0] != "time" {
		return fmt.Errorf("%s: want a header starting with time and at least one row", path)
	}
	if ref.Starts != nil && len(ref.Starts) != len(rows)-1 {
		return fmt.Errorf("%s: %d rows, the other reference file has %d", path, len(rows)-1, len(ref.Starts))
	}
	columns := make([][]float64, len(rows[0]))
	starts := make([]int64, len(rows)-1)
	for n, row := range rows[1:] {
		if len(row) != len(rows[0]) {
			return fmt.Errorf("%s row %d: %d columns, want %d", path, n+2, len(row), len(rows[0]))
		}
		if starts[n], err = strconv.ParseInt(row[0], 10, 64); err != nil {
			return fmt.Errorf("%s row %d: time: %w", path, n+2, err)
		}
		for c := 1; c < len(row); c++ {
			v, err := strconv.ParseFloat(row[c], 64)
			if err != nil {
				return fmt.Errorf("%s row %d: %s: %w", path, n+2, rows[0][c], err)
			}
			columns[c] = append(columns[c], v)
		}
	}
	if ref.Starts == nil {
		ref.Starts = starts
	}
	for n, s := range starts {
		if ref.Starts[n] != s {
			return fmt.Errorf("%s row %d: time %d, the other reference file has %d", path, n+2, s, ref.Starts[n])
		}
	}
	for c, header := range rows[0][1:] {
		name, field, ok := strings.Cut(header, ".")
		if pair, known := talibColumns[header]; known {
			name, field, ok = pair[0], pair[1], true
		}
		if !ok {
			return fmt.Errorf("%s: column %q is neither known nor <indicator>.<field>", path, header)
		}
		if err := ref.add(name, field, columns[c+1]); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	return nil
}

// add stores one column; a column already read must be identical.
func (ref *TalibReference) add(name, field string, values []float64) error {
	fields := ref.Values[name]
	if fields == nil {
		fields = map[string][]float64{}
		ref.Values[name] = fields
	}
	if old, ok := fields[field]; ok {
		for i, v := range old {
			if v != values[i] && !(math.IsNaN(v) && math.IsNaN(values[i])) {
				return fmt.Errorf("%s.%s bar %d: %v here, %v in the other file", name, field, i, values[i], v)
			}
		}
	}
	fields[field] = values
	return nil
}
