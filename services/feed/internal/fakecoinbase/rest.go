package fakecoinbase

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// restError is the exchange's error body.
type restError struct {
	Error        string `json:"error"`
	Message      string `json:"message"`
	ErrorDetails string `json:"error_details,omitempty"`
}

// restCandle is a candle as the REST API sends it: strings, no product_id.
type restCandle struct {
	Start  string `json:"start"`
	Low    string `json:"low"`
	High   string `json:"high"`
	Open   string `json:"open"`
	Close  string `json:"close"`
	Volume string `json:"volume"`
}

// handleCandles serves GET .../products/{product}/candles. Candles whose
// start lies in [start, end] are returned newest first.
func (s *Server) handleCandles(private bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		req := Request{At: time.Now(), Method: r.Method, Path: r.URL.Path, Query: r.URL.Query()}
		status, body, header := s.answerCandles(r, private)
		req.Status = status
		s.mu.Lock()
		s.requests = append(s.requests, req)
		s.mu.Unlock()
		for k, v := range header {
			w.Header()[k] = v
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body) // the client may have gone; nothing to do
	}
}

func (s *Server) answerCandles(r *http.Request, private bool) (int, any, http.Header) {
	s.mu.Lock()
	if len(s.failures) > 0 {
		f := s.failures[0]
		s.failures = s.failures[1:]
		s.mu.Unlock()
		header := http.Header{}
		if f.retryAfter > 0 {
			header.Set("Retry-After", strconv.Itoa(int(f.retryAfter/time.Second)))
		}
		return f.status, f.body, header
	}
	s.mu.Unlock()

	if private {
		if err := s.authorize(r); err != nil {
			s.recordAuthFailure(err)
			return http.StatusUnauthorized, restError{Error: "UNAUTHENTICATED", Message: err.Error()}, nil
		}
	}
	query := r.URL.Query()
	start, errStart := strconv.ParseInt(query.Get("start"), 10, 64)
	end, errEnd := strconv.ParseInt(query.Get("end"), 10, 64)
	if errStart != nil || errEnd != nil || end < start {
		return badRequest("start and end argument is invalid - start and end must be unix seconds with start <= end")
	}
	granularity := query.Get("granularity")
	step, ok := granularitySeconds[granularity]
	if !ok {
		return badRequest(fmt.Sprintf("granularity %q is invalid", granularity))
	}
	limit := MaxBuckets
	if text := query.Get("limit"); text != "" {
		n, err := strconv.Atoi(text)
		if err != nil || n < 1 || n > MaxBuckets {
			return badRequest(fmt.Sprintf("limit %q is invalid", text))
		}
		limit = n
	}
	product := r.PathValue("product")
	s.mu.Lock()
	series, known := s.store[product]
	var candles []Candle
	if known {
		for at, c := range series[granularity] {
			if at >= start && at <= end {
				candles = append(candles, c)
			}
		}
	}
	s.mu.Unlock()
	if !known {
		return http.StatusNotFound, restError{Error: "NOT_FOUND", Message: "Product " + product + " not supported"}, nil
	}
	if (end-start)/step > MaxBuckets {
		return badRequest("start and end argument is invalid - number of candles requested should be less than " + strconv.Itoa(MaxBuckets))
	}
	slices.SortFunc(candles, func(a, b Candle) int { return b.Start.Compare(a.Start) })
	candles = candles[:min(len(candles), limit)]
	out := make([]restCandle, len(candles))
	for i, c := range candles {
		out[i] = restCandle{
			Start: strconv.FormatInt(c.Start.Unix(), 10),
			Low:   decimal(c.Low), High: decimal(c.High), Open: decimal(c.Open), Close: decimal(c.Close),
			Volume: decimal(c.Volume),
		}
	}
	return http.StatusOK, map[string][]restCandle{"candles": out}, nil
}

func badRequest(details string) (int, any, http.Header) {
	return http.StatusBadRequest, restError{Error: "INVALID_ARGUMENT", Message: details, ErrorDetails: details}, nil
}

// authorize checks the bearer JWT of a private request.
func (s *Server) authorize(r *http.Request) error {
	if s.cfg.authKey == nil {
		return fmt.Errorf("%w: the server has no key configured", errAuth)
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return fmt.Errorf("%w: Authorization bearer token is missing", errAuth)
	}
	return s.verifyJWT(token, r.Method+" "+r.Host+r.URL.Path)
}

// decimal formats v as the exchange does: a plain decimal string.
func decimal(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
