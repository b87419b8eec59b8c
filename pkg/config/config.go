// Package config loads a binary's configuration from the environment: one
// struct per binary, parsed with github.com/caarlos0/env, defaults from
// struct tags, a one-line error naming the variable for a bad or missing
// value, -h listing every variable, and a log form with secrets masked.
//
// Fields are tagged `env:"NAME"`, optionally `envDefault:"..."`, `help:"..."`,
// `secret:"true"` and `was:"OLD_NAME"` (a name the variable had before: it
// is still read, with a warning on stderr, when NAME is not set). A struct
// with a Validate() error method is validated after parsing.
//
// Names follow one rule (docs/design.md "Configuration names"): a variable
// one service alone reads is VIGIL_<SERVICE>_<NAME>, or inside a service
// VIGIL_<COMPONENT>_<NAME> for the component it configures (COINBASE, SIM,
// REPLAY, WEBHOOK); a variable more than one service (or vigilctl) reads is
// VIGIL_<NAME>; the ecosystem's names stay as they are (NATS_URL,
// REDIS_URL, DATABASE_URL, OTEL_*).
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"reflect"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caarlos0/env/v11"
)

// ErrHelp is returned by Load when -h or --help was given; the usage has
// been printed.
var ErrHelp = errors.New("help requested")

// Validator is implemented by config structs that check their values.
type Validator interface {
	Validate() error
}

// Load parses the environment into cfg (a pointer to a struct), handles -h
// in args by printing the variables to out, and validates the result.
func Load(cfg any, binary, description string, args []string, out io.Writer) error {
	fs := flag.NewFlagSet(binary, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			PrintUsage(out, cfg, binary, description)
			return ErrHelp
		}
		return fmt.Errorf("%s: %w (use -h to list the environment variables)", binary, err)
	}
	environ, renamed := withFormerNames(cfg, env.ToMap(os.Environ()))
	for _, r := range renamed {
		fmt.Fprintf(os.Stderr, "%s: config: %s is deprecated, read as %s; rename it, the old name goes in the next release\n", binary, r[0], r[1])
	}
	return Parse(cfg, environ)
}

// Parse parses environ (variable names to values, as the environment
// holds them) into cfg, a pointer to a struct, with the defaults of its
// tags, and validates the result: Load without the flags, the process
// environment and the former names, for a configuration built in code
// (tests).
func Parse(cfg any, environ map[string]string) error {
	if err := env.ParseWithOptions(cfg, env.Options{Environment: environ}); err != nil {
		return fmt.Errorf("config: %s", oneLine(err, cfg))
	}
	if v, ok := cfg.(Validator); ok {
		if err := v.Validate(); err != nil {
			return fmt.Errorf("config: %w", err)
		}
	}
	return nil
}

// withFormerNames returns environ with the value of each variable of cfg
// that is not set (or empty) but is under its former name (its `was` tag) set under
// its name, and the pairs {former, name} so read.
func withFormerNames(cfg any, environ map[string]string) (map[string]string, [][2]string) {
	var renamed [][2]string
	walk(reflect.ValueOf(cfg), func(f reflect.StructField, _ reflect.Value) {
		was := f.Tag.Get("was")
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if was == "" {
			return
		}
		if environ[name] != "" {
			return
		}
		if v := environ[was]; v != "" {
			environ[name] = v
			renamed = append(renamed, [2]string{was, name})
		}
	})
	return environ, renamed
}

// oneLine joins caarlos0/env's errors into one line that names each
// variable (its parse errors name only the Go field).
func oneLine(err error, cfg any) string {
	errs := []error{err}
	var agg env.AggregateError
	if errors.As(err, &agg) {
		errs = agg.Errors
	}
	envName := map[string]string{}
	walk(reflect.ValueOf(cfg), func(f reflect.StructField, _ reflect.Value) {
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		envName[f.Name] = name
	})
	parts := make([]string, 0, len(errs))
	for _, e := range errs {
		var pe env.ParseError
		if errors.As(e, &pe) {
			parts = append(parts, fmt.Sprintf("%s: %v", envName[pe.Name], pe.Err))
			continue
		}
		parts = append(parts, strings.TrimPrefix(e.Error(), "env: "))
	}
	return strings.Join(parts, "; ")
}

// Var describes one environment variable of a config struct.
type Var struct {
	Name     string
	Default  string
	Help     string
	Required bool
	Secret   bool
	// Value is the current value, already masked when secret.
	Value string
}

// Vars lists the variables of cfg in field order, with their current values.
func Vars(cfg any) []Var {
	var out []Var
	walk(reflect.ValueOf(cfg), func(f reflect.StructField, v reflect.Value) {
		tag := f.Tag.Get("env")
		name, opts, _ := strings.Cut(tag, ",")
		secret := f.Tag.Get("secret") == "true"
		out = append(out, Var{
			Name:     name,
			Default:  f.Tag.Get("envDefault"),
			Help:     f.Tag.Get("help"),
			Required: strings.Contains(opts, "required"),
			Secret:   secret,
			Value:    display(v, secret),
		})
	})
	return out
}

func walk(v reflect.Value, visit func(reflect.StructField, reflect.Value)) {
	for v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		fv := v.Field(i)
		if f.Tag.Get("env") == "" {
			if fv.Kind() == reflect.Struct && f.Type != reflect.TypeFor[time.Time]() {
				walk(fv, visit)
			}
			continue
		}
		visit(f, fv)
	}
}

// display renders a value for logs: secrets as "***" (empty stays empty),
// URLs with their password masked.
func display(v reflect.Value, secret bool) string {
	s := fmt.Sprint(v.Interface())
	if secret {
		if s == "" {
			return ""
		}
		return "***"
	}
	return MaskURL(s)
}

// MaskURL replaces the password of a URL, or of each URL of a
// comma-separated list (NATS_URL), with ***. A part that does not parse
// but has user information (an @ after ://) loses all of it; anything
// else is returned as it is.
func MaskURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = maskOne(p)
	}
	return strings.Join(parts, ",")
}

// maskOne is MaskURL of one URL.
func maskOne(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		scheme, rest, ok := strings.Cut(s, "://")
		if at := strings.LastIndex(rest, "@"); ok && at >= 0 {
			return scheme + "://***" + rest[at:]
		}
		return s
	}
	if u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); !ok {
		return s
	}
	u.User = url.UserPassword(u.User.Username(), "***")
	return strings.Replace(u.String(), "%2A%2A%2A", "***", 1)
}

// PrintUsage writes the binary's description and its variables.
func PrintUsage(out io.Writer, cfg any, binary, description string) {
	fmt.Fprintf(out, "%s — %s\n\nConfigured by environment variables:\n\n", binary, description)
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	for _, v := range Vars(cfg) {
		def := v.Default
		switch {
		case v.Required:
			def = "(required)"
		case def == "":
			def = "(unset)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Name, def, v.Help)
	}
	fmt.Fprintf(tw, "  OTEL_*\t(unset)\tOpenTelemetry: OTEL_EXPORTER_OTLP_ENDPOINT turns tracing and metrics on\n")
	tw.Flush()
}

// LogValue is the resolved configuration for one log line, secrets masked.
func LogValue(cfg any) slog.Value {
	vars := Vars(cfg)
	attrs := make([]slog.Attr, 0, len(vars))
	for _, v := range vars {
		attrs = append(attrs, slog.String(v.Name, v.Value))
	}
	return slog.GroupValue(attrs...)
}

// CheckURL checks that raw parses as a URL with one of the schemes; the
// error names the variable.
func CheckURL(name, raw string, schemes ...string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%s: %q is not a URL: %v", name, MaskURL(raw), err)
	}
	for _, s := range schemes {
		if u.Scheme == s && u.Host != "" {
			return nil
		}
	}
	return fmt.Errorf("%s: %q must be a URL with scheme %s and a host", name, MaskURL(raw), strings.Join(schemes, " or "))
}
