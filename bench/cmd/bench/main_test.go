package main

import (
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestSelected(t *testing.T) {
	tests := []struct {
		only    string
		want    []string
		wantErr string
	}{
		{"", []string{"ta", "memory", "ack", "sequence", "clear", "backfill", "pipeline", "scaleout", "peruser"}, ""},
		{"pipeline,ack,ack", []string{"ack", "pipeline"}, ""},
		{"ack,nope", nil, `"nope" is not a figure`},
	}
	for _, tt := range tests {
		t.Run(tt.only, func(t *testing.T) {
			figs, err := selected(tt.only)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			var names []string
			for _, f := range figs {
				names = append(names, f.Name)
			}
			if err != nil || !reflect.DeepEqual(names, tt.want) {
				t.Fatalf("selected(%q) = %v, %v; want %v", tt.only, names, err, tt.want)
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(t *testing.T, f flags)
		wantErr string
	}{
		{"defaults", nil, func(t *testing.T, f flags) {
			if f.opts.AckIterations != 1000 || !reflect.DeepEqual(f.opts.PipelineSeries, []int{1000, 10000}) || f.opts.ClearKeys != 1_000_000 {
				t.Errorf("defaults = %+v", f.opts)
			}
		}, ""},
		{"quick keeps explicit flags", []string{"-quick", "-ack-iterations", "7", "-pipeline-series", "300"}, func(t *testing.T, f flags) {
			if f.opts.AckIterations != 7 || !reflect.DeepEqual(f.opts.PipelineSeries, []int{300}) || f.opts.ClearKeys != 100_000 {
				t.Errorf("quick = %+v", f.opts)
			}
		}, ""},
		{"bad series", []string{"-pipeline-series", "10,x"}, nil, `"x" is not a positive count`},
		{"zero count", []string{"-ack-iterations", "0"}, nil, "counts must be positive"},
		{"scaleout sizes", []string{"-quick"}, func(t *testing.T, f flags) {
			if f.opts.ScaleOutSeries != 300 || f.opts.ScaleOutBars != 10 {
				t.Errorf("quick scaleout = %d series, %d bars", f.opts.ScaleOutSeries, f.opts.ScaleOutBars)
			}
		}, ""},
		{"zero scaleout series", []string{"-scaleout-series", "0"}, nil, "counts must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, f)
		})
	}
}
