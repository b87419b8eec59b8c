package ctl

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"vigil.dev/pkg/contract"
)

// DefaultWait is how long a command waits for its result by default.
const DefaultWait = 2 * time.Minute

// commandOptions are the flags every command subcommand has.
type commandOptions struct {
	user     string
	id       string
	operator string
	noWait   bool
	timeout  time.Duration
	json     bool
	// dryRun makes the summary end with how to run the plan.
	dryRun bool
}

// payloadFlags are the flags that make up command payloads.
type payloadFlags struct {
	symbols    []string
	symbol     string
	timeframes []string
	from, to   string
	scope      string
	timeframe  string
	exchange   int64
	target     string
	// dryRun (--plan) and planHash (--plan-hash) are the dry-run fields
	// of the plannable commands.
	dryRun   bool
	planHash string
}

// planning is the payload's dry-run part.
func (p *payloadFlags) planning() contract.Planning {
	return contract.Planning{DryRun: p.dryRun, Plan: p.planHash}
}

// commandSpec describes the subcommand of one control command.
type commandSpec struct {
	use     string
	aliases []string
	command contract.Command
	short   string
	example string
	args    cobra.PositionalArgs
	// ownIDFlag names the flag of the command's own id ("id" when
	// empty; cancel's --id names the command to cancel).
	ownIDFlag string
	flags     func(f *pflag.FlagSet, p *payloadFlags)
	// payload builds the request body; vigil-control validates it.
	payload func(p *payloadFlags, args []string) any
	// plannable commands take --plan and --plan-hash.
	plannable bool
}

// commandSpecs are the control commands.
var commandSpecs = []commandSpec{
	{
		use: "pause", command: contract.CmdPause,
		short:   "Pause a user: alerts stop evaluating, the feed unsubscribes, indicators stop",
		example: "  vigilctl pause --user demo",
		payload: func(*payloadFlags, []string) any { return contract.PausePayload{} },
	},
	{
		use: "resume", command: contract.CmdResume,
		short:   "Resume a user: indicators start, the feed resubscribes and fills the gap, alerts start",
		example: "  vigilctl resume --user demo\n  vigilctl resume --user demo --symbols BTC-USD,ETH-USD",
		flags: func(f *pflag.FlagSet, p *payloadFlags) {
			f.StringSliceVar(&p.symbols, "symbols", nil, "symbols to watch from now on (they become the stored symbols)")
		},
		payload: func(p *payloadFlags, _ []string) any { return contract.ResumePayload{Symbols: p.symbols} },
	},
	{
		use: "reload", aliases: []string{"reload-settings"}, command: contract.CmdReloadSettings,
		short:     "Reload a user's settings from the database and apply them everywhere",
		example:   "  vigilctl reload --user demo\n  vigilctl reload --user demo --plan\n  vigilctl reload --user demo --plan-hash <hash from --plan>",
		plannable: true,
		payload:   func(p *payloadFlags, _ []string) any { return contract.ReloadSettingsPayload{Planning: p.planning()} },
	},
	{
		use: "mode <position-monitor|scalper-macdv|scalper-orderbook>", aliases: []string{"switch-mode"},
		command:   contract.CmdSwitchMode,
		short:     "Switch a user's mode",
		example:   "  vigilctl mode scalper-macdv --user demo",
		args:      exactArgs(1, "the mode (position-monitor, scalper-macdv or scalper-orderbook)"),
		plannable: true,
		payload: func(p *payloadFlags, args []string) any {
			return contract.SwitchModePayload{Mode: contract.Mode(args[0]), Planning: p.planning()}
		},
	},
	{
		use: "backfill", aliases: []string{"force-backfill"}, command: contract.CmdForceBackfill,
		short:   "Backfill a symbol's history (a background job with progress)",
		example: "  vigilctl backfill --user demo --symbol BTC-USD --timeframes 1h,4h\n  vigilctl backfill --user demo --symbol ETH-USD --from 2026-11-01T00:00:00Z",
		flags: func(f *pflag.FlagSet, p *payloadFlags) {
			f.StringVar(&p.symbol, "symbol", "", "the symbol to backfill, e.g. BTC-USD (required)")
			f.StringSliceVar(&p.timeframes, "timeframes", nil, "timeframes to backfill (default all six: 1m,5m,15m,1h,4h,1d)")
			f.StringVar(&p.from, "from", "", "start of the range, RFC 3339 (default: vigil-control's default range before --to)")
			f.StringVar(&p.to, "to", "", "end of the range, RFC 3339 (default now)")
		},
		plannable: true,
		payload: func(p *payloadFlags, _ []string) any {
			tfs := make([]contract.Timeframe, len(p.timeframes))
			for i, tf := range p.timeframes {
				tfs[i] = contract.Timeframe(tf)
			}
			return contract.ForceBackfillPayload{Symbol: p.symbol, Timeframes: tfs, From: p.from, To: p.to, Planning: p.planning()}
		},
	},
	{
		use: "clear-cache", command: contract.CmdClearCache,
		short:   "Delete a user's cached candles and indicators (all, one symbol, or one symbol's timeframe)",
		example: "  vigilctl clear-cache --user demo --scope all\n  vigilctl clear-cache --user demo --scope timeframe --symbol BTC-USD --timeframe 1h",
		flags: func(f *pflag.FlagSet, p *payloadFlags) {
			f.StringVar(&p.scope, "scope", "", "what to clear: all, symbol or timeframe (required)")
			f.StringVar(&p.symbol, "symbol", "", "the symbol (scopes symbol and timeframe)")
			f.StringVar(&p.timeframe, "timeframe", "", "the timeframe (scope timeframe)")
			f.Int64Var(&p.exchange, "exchange", 0, "exchange account id (default the user's first account)")
		},
		plannable: true,
		payload: func(p *payloadFlags, _ []string) any {
			return contract.ClearCachePayload{Scope: contract.ClearScope(p.scope), Symbol: p.symbol,
				Timeframe: contract.Timeframe(p.timeframe), Exchange: p.exchange, Planning: p.planning()}
		},
	},
	{
		use: "cancel", command: contract.CmdCancel, ownIDFlag: "cancel-id",
		short:   "Cancel a user's queued command or running backfill job (a running sequence is not interrupted)",
		example: "  vigilctl cancel --user demo --id 01JD6Q3V8R2N4M7K9XWZ5T1BCA",
		flags: func(f *pflag.FlagSet, p *payloadFlags) {
			f.StringVar(&p.target, "id", "", "the id of the command to cancel (required)")
		},
		payload: func(p *payloadFlags, _ []string) any { return contract.CancelPayload{ID: p.target} },
	},
}

// checkPlanFlags rejects --plan with --plan-hash and a malformed hash.
func checkPlanFlags(p *payloadFlags) error {
	if p.planHash == "" {
		return nil
	}
	if p.dryRun {
		return usageErrorf("--plan and --plan-hash exclude each other: --plan makes a plan, --plan-hash runs one")
	}
	if err := contract.ValidatePlanHash(p.planHash); err != nil {
		return flagError("plan-hash", err)
	}
	return nil
}

// exactArgs requires n positional arguments, naming what they are.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("expected %s, got %d arguments", what, len(args))
		}
		return nil
	}
}

// newCommandCmd builds the subcommand of one control command.
func newCommandCmd(sys IO, conn *connFlags, spec commandSpec) *cobra.Command {
	var o commandOptions
	var p payloadFlags
	ownID := spec.ownIDFlag
	if ownID == "" {
		ownID = "id"
	}
	args := spec.args
	if args == nil {
		args = exactArgs(0, "no arguments")
	}
	cmd := &cobra.Command{
		Use:     spec.use,
		Aliases: spec.aliases,
		Short:   spec.short,
		Example: spec.example,
		Args:    args,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := contract.ValidateUserToken(o.user); err != nil {
				return flagError("user", err)
			}
			if o.id != "" {
				if err := contract.ValidateCommandID(o.id); err != nil {
					return flagError(ownID, err)
				}
			}
			if o.timeout <= 0 {
				return usageErrorf("--timeout: must be positive")
			}
			if err := checkPlanFlags(&p); err != nil {
				return err
			}
			o.dryRun = p.dryRun
			body, err := json.Marshal(spec.payload(&p, args))
			if err != nil {
				return fmt.Errorf("encode the payload: %w", err)
			}
			nc, err := conn.connect(cmd.Context(), sys.Getenv)
			if err != nil {
				return err
			}
			defer nc.Close()
			s := sender{sys: sys, nc: nc, opts: o}
			return s.send(cmd.Context(), spec.command, body)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.user, "user", "u", "", "the user token (identity_sub) the command is for (required)")
	f.StringVar(&o.id, ownID, "", "command id, sent as Nats-Msg-Id: the same id within 10 minutes returns the first ACK and runs once (default a new ULID)")
	f.StringVar(&o.operator, "operator", sys.Getenv("USER"), "operator name for the audit log, sent as the Vigil-Operator header")
	f.BoolVar(&o.noWait, "no-wait", false, "return after the ACK instead of waiting for the result")
	f.DurationVar(&o.timeout, "timeout", DefaultWait, "how long to wait for the ACK and the result")
	f.BoolVar(&o.json, "json", false, "print the raw ACK and result JSON, one per line")
	if spec.flags != nil {
		spec.flags(f, &p)
	}
	if spec.plannable {
		f.BoolVar(&p.dryRun, "plan", false, "dry run: change nothing, print what every instance would change and the plan hash")
		f.StringVar(&p.planHash, "plan-hash", "", "run only if nothing the plan of --plan depended on changed since (else conflict)")
	}
	return cmd
}
