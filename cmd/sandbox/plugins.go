package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/sandboxhq/sandbox/core/host"
)

// pluginRow is one plugin in `sandbox plugins`: its description, or why it
// could not be launched.
type pluginRow struct {
	host.Description
	Error string `json:"error,omitempty"`
}

func (a *app) pluginsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "plugins",
		Short: "Launch every configured plugin and show its protocol version and capabilities",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.load(); err != nil {
				return err
			}
			ctx := a.context()
			var rows []pluginRow
			failed := false
			for _, name := range a.host.Names() {
				p, err := a.host.Plugin(name)
				if err != nil {
					return err
				}
				d, err := p.Describe(ctx)
				if err != nil {
					failed = true
					d.Plugin = name
				}
				rows = append(rows, pluginRow{Description: d, Error: errorText(err)})
			}
			if err := a.emit(map[string]any{"plugins": rows}, func(w io.Writer) { printPlugins(w, rows, a.cfg.Path) }); err != nil {
				return err
			}
			if failed {
				return errReported
			}
			return nil
		},
	}
}

func printPlugins(w io.Writer, rows []pluginRow, path string) {
	if len(rows) == 0 {
		fmt.Fprintf(w, "No plugins configured in %s: add a [plugins.NAME] table (see docs/configuration.md).\n", path)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PLUGIN\tPROTOCOL\tDRIVER\tVERSION\tHYPERVISOR\tCAPABILITIES")
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\tERROR: %s\n", r.Plugin, r.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", r.Plugin, r.Protocol, orDash(r.Info.Name), orDash(r.Info.Version),
			orDash(r.Info.Hypervisor), orDash(r.Info.Capabilities.String()))
	}
	_ = tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
