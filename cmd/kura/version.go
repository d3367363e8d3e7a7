package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// version is set at link time by release builds (-ldflags "-X main.version=v1.2.3"); otherwise
// the module's version from the build info is used ("(devel)" for a build from a checkout).
var version = ""

type versionJSON struct {
	Version   string `json:"version"`
	GoVersion string `json:"goVersion"`
	GitCommit string `json:"gitCommit"` // "" when the build did not record one
	Modified  bool   `json:"modified"`  // built from a tree with uncommitted changes
	Built     string `json:"built"`     // the commit's time, RFC 3339; "" when unknown
	OSArch    string `json:"osArch"`
}

// buildVersion reads what the Go toolchain recorded in the binary: module version, VCS
// revision and time (go build stamps them in a git checkout).
func buildVersion() versionJSON {
	v := versionJSON{Version: version, GoVersion: runtime.Version(), OSArch: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if v.Version == "" {
			v.Version = "unknown"
		}
		return v
	}
	if v.Version == "" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.GitCommit = s.Value
		case "vcs.time":
			v.Built = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// short is the one line --version prints, as podman --version does.
func (v versionJSON) short() string {
	s := v.Version
	if v.GitCommit != "" {
		s += " (" + v.GitCommit[:min(12, len(v.GitCommit))]
		if v.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s
}

func init() {
	rootCmd.Version = buildVersion().short()
	rootCmd.SetVersionTemplate("kura version {{.Version}}\n")
	rootCmd.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Show the version, Go version and commit of this build",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := buildVersion()
			if global.json {
				return printJSON(cmd.OutOrStdout(), v)
			}
			commit := v.GitCommit
			if commit == "" {
				commit = "unknown"
			} else if v.Modified {
				commit += " (modified)"
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 1, ' ', 0)
			fmt.Fprintf(tw, "Version:\t%s\n", v.Version)
			fmt.Fprintf(tw, "Go Version:\t%s\n", v.GoVersion)
			fmt.Fprintf(tw, "Git Commit:\t%s\n", commit)
			if v.Built != "" {
				fmt.Fprintf(tw, "Built:\t%s\n", v.Built)
			}
			fmt.Fprintf(tw, "OS/Arch:\t%s\n", v.OSArch)
			return tw.Flush()
		},
	})
}
