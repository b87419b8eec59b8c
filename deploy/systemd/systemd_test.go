// Package systemd holds the systemd units and example environment files
// that run vigil on hosts; its test keeps them in step with the binaries
// and the NATS configuration.
package systemd

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"vigil.dev/pkg/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Run(m)) }

var services = []string{"feed", "indicators", "alerts", "control"}

// envFile reads the variables an example environment file sets.
func envFile(t *testing.T, name string) map[string]string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vars := map[string]string{}
	scan := bufio.NewScanner(f)
	for scan.Scan() {
		line := strings.TrimSpace(scan.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not NAME=value", name, line)
		}
		vars[k] = v
	}
	if err := scan.Err(); err != nil {
		t.Fatal(err)
	}
	return vars
}

// helpVariables are the variables a binary's -h lists, and which of them
// are required.
func helpVariables(t *testing.T, binary string) (all, required map[string]bool) {
	t.Helper()
	out, err := exec.Command(binary, "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("%s -h: %v\n%s", binary, err, out)
	}
	all, required = map[string]bool{}, map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || !regexp.MustCompile(`^[A-Z][A-Z0-9_]+$`).MatchString(fields[0]) {
			continue
		}
		all[fields[0]] = true
		if fields[1] == "(required)" {
			required[fields[0]] = true
		}
	}
	return all, required
}

// TestEnvFilesMatchTheBinaries checks that every variable the example
// files set is one the service reads (-h), and that common.env and the
// service's file together set every variable it requires.
func TestEnvFilesMatchTheBinaries(t *testing.T) {
	bin := testenv.BuildBinaries(t)
	common := envFile(t, "common.env")
	for _, svc := range services {
		t.Run(svc, func(t *testing.T) {
			all, required := helpVariables(t, filepath.Join(bin, "vigil-"+svc))
			own := envFile(t, svc+".env")
			for _, vars := range []map[string]string{common, own} {
				for name := range vars {
					if !all[name] && !strings.HasPrefix(name, "OTEL_") {
						t.Errorf("%s is set for vigil-%s, which does not read it", name, svc)
					}
				}
			}
			for name := range required {
				if _, ok := own[name]; !ok {
					if _, ok := common[name]; !ok {
						t.Errorf("vigil-%s requires %s; neither common.env nor %s.env sets it", svc, name, svc)
					}
				}
			}
		})
	}
}

// TestNATSEnvSetsEveryVariableOfTheClusterConfig checks nats.env against
// the $VIGIL_ variables of cluster.conf and auth.conf (the environment
// the server reads).
func TestNATSEnvSetsEveryVariableOfTheClusterConfig(t *testing.T) {
	set := envFile(t, "nats.env")
	for _, conf := range []string{"../nats/cluster.conf", "../nats/auth.conf"} {
		b, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			for _, m := range regexp.MustCompile(`\$(VIGIL_[A-Z0-9_]+)`).FindAllStringSubmatch(line, -1) {
				if _, ok := set[m[1]]; !ok {
					t.Errorf("%s uses $%s; nats.env does not set it", conf, m[1])
				}
			}
		}
	}
}

// TestUnitsVerify runs systemd-analyze verify on every unit (the
// template instantiated for each service), with ExecStart pointed at the
// built binaries: an unknown key or a bad value fails the test.
func TestUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	bin := testenv.BuildBinaries(t)
	template, err := os.ReadFile("vigil@.service")
	if err != nil {
		t.Fatal(err)
	}
	nats, err := os.ReadFile("vigil-nats.service")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	units := map[string]string{
		// Any executable stands in for nats-server.
		"vigil-nats.service": strings.Replace(string(nats), "/usr/local/bin/nats-server", filepath.Join(bin, "vigil-feed"), 1),
	}
	for _, svc := range services {
		units["vigil@"+svc+".service"] = strings.Replace(string(template), "/usr/local/bin/vigil-%i", filepath.Join(bin, "vigil-%i"), 1)
	}
	for name, text := range units {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("systemd-analyze verify %s: %v\n%s", name, err, out)
		}
	}
}
