package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"vigil.dev/pkg/contract"
	"vigil.dev/pkg/db"
	"vigil.dev/services/control/internal/ledger"
)

// DefaultHistoryLimit is how many commands history shows by default.
const DefaultHistoryLimit = 20

func newHistoryCmd(sys IO) *cobra.Command {
	var user string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "history",
		Short: "Show a user's last commands from the command_log audit table (needs DATABASE_URL)",
		Example: `  DATABASE_URL=postgres://vigil@127.0.0.1:5432/vigil vigilctl history --user demo
  vigilctl history --user demo --limit 5 --json`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := contract.ValidateUserToken(user); err != nil {
				return flagError("user", err)
			}
			if limit <= 0 {
				return usageErrorf("--limit: must be positive")
			}
			url := sys.Getenv("DATABASE_URL")
			if url == "" {
				return usageErrorf("history reads Postgres command_log: set DATABASE_URL, e.g. postgres://vigil@127.0.0.1:5432/vigil")
			}
			entries, err := readHistory(cmd.Context(), url, user, limit)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(sys.Stdout)
				for _, e := range entries {
					if err := enc.Encode(e); err != nil {
						return err
					}
				}
				return nil
			}
			printHistory(sys.Stdout, user, entries)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&user, "user", "u", "", "the user token (required)")
	f.IntVarP(&limit, "limit", "n", DefaultHistoryLimit, "how many of the latest commands to show")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per command")
	return cmd
}

// readHistory reads the user's latest limit commands, oldest first.
func readHistory(ctx context.Context, url, user string, limit int) ([]ledger.HistoryEntry, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	pool, err := db.NewPool(ctx, url)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	return ledger.History(ctx, pool, user, limit)
}

// printHistory writes the entries as a table.
func printHistory(w io.Writer, user string, entries []ledger.HistoryEntry) {
	if len(entries) == 0 {
		fmt.Fprintf(w, "no commands for %s in command_log\n", user)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ACCEPTED\tID\tCOMMAND\tSTATUS\tOPERATOR\tNAME\tTOOK\tPAYLOAD\tERROR")
	for _, e := range entries {
		took := "-"
		if e.FinishedAt != nil {
			took = e.FinishedAt.Sub(e.AcceptedAt).Round(time.Millisecond).String()
		}
		errText := ""
		if e.Error != nil {
			errText = e.Error.Error()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.AcceptedAt.UTC().Format("2006-01-02 15:04:05Z"), e.ID,
			e.Command, e.Status, dash(e.Operator), dash(e.OperatorName), took, compactJSON(e.Payload), errText)
	}
	_ = tw.Flush()
}
