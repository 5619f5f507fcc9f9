package main

// What Nomad's task runner does between allocating a task directory and
// calling StartTask, for the parts a job file can ask for:
//
//   - the task environment's directory variables, chosen by the driver's
//     filesystem isolation (client/allocrunner/taskrunner/task_dir_hook.go:
//     image and chroot isolation get the paths inside the task, /alloc,
//     /local and /secrets; none gets the host paths);
//   - the `env { }` block, interpolated with the task environment
//     (client/taskenv: hargs.ReplaceEnv; unknown references stay as text);
//   - `artifact { }` blocks, fetched before templates (the artifact hook runs
//     first), into `local/` unless `destination` says otherwise; archives
//     (.tar.gz, .tgz, .zip) are unpacked as go-getter's "any" mode does;
//   - `template { }` blocks rendered into the task directory with `perms`
//     (default 0644), and `env = true` templates parsed as KEY=VALUE lines
//     (go-envparse) into the environment, where they override the env block.
//
// Templates support consul-template's `env` (the task environment) and
// Nomad's `nomadVar` (variables the test passes as nomad_vars); Consul and
// Vault functions are not synthesised. Only http(s) artifacts are fetched.

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"

	driverpb "nomadsim/gen/drivers"
)

type jobTemplate struct {
	Data, Destination, Perms string
	Env                      bool
}

type jobArtifact struct {
	Source, Destination, Mode string
}

// taskHooks holds what a job's task asks of the client besides its config.
type taskHooks struct {
	Env       map[string]string
	Templates []jobTemplate
	Artifacts []jobArtifact
}

// parseTaskHooks reads a task body's env, template and artifact blocks the
// way jobspec2 does at submit time: var.* and local.* are evaluated, any
// other reference stays as the text "${...}" for the client to interpolate.
func parseTaskHooks(blocks hcl.Blocks, src []byte, ctx *hcl.EvalContext) (taskHooks, hcl.Diagnostics) {
	hooks := taskHooks{Env: map[string]string{}}
	var diags hcl.Diagnostics
	str := func(attr *hcl.Attribute) string {
		expr, ok := attr.Expr.(hclsyntax.Expression)
		if !ok {
			return ""
		}
		v, d := evalKeepingUnknown(expr, src, ctx)
		diags = append(diags, d...)
		if d.HasErrors() || v.IsNull() || !v.IsKnown() {
			return ""
		}
		if v.Type() == cty.Bool {
			return strconv.FormatBool(v.True())
		}
		if v.Type() == cty.Number {
			return v.AsBigFloat().Text('f', -1)
		}
		if v.Type() != cty.String {
			r := attr.Expr.Range()
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Unsuitable value type",
				Detail: "a string is required", Subject: &r})
			return ""
		}
		return v.AsString()
	}
	for _, b := range blocks {
		attrs, d := b.Body.JustAttributes()
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		get := func(name string) string {
			if a, ok := attrs[name]; ok {
				return str(a)
			}
			return ""
		}
		switch b.Type {
		case "env":
			for name, a := range attrs {
				hooks.Env[name] = str(a)
			}
		case "template":
			t := jobTemplate{Data: get("data"), Destination: get("destination"), Perms: get("perms")}
			t.Env = get("env") == "true"
			if t.Perms == "" {
				t.Perms = "0644"
			}
			hooks.Templates = append(hooks.Templates, t)
		case "artifact":
			a := jobArtifact{Source: get("source"), Destination: get("destination"), Mode: get("mode")}
			if a.Destination == "" {
				a.Destination = "local/"
			}
			if a.Mode == "" {
				a.Mode = "any"
			}
			hooks.Artifacts = append(hooks.Artifacts, a)
		}
	}
	return hooks, diags
}

var envReference = regexp.MustCompile(`\$\{([^}]+)\}`)

// replaceEnv interpolates ${NAME} with the task environment; references it
// does not know are left as they are (hargs.ReplaceEnv).
func replaceEnv(s string, env map[string]string) string {
	return envReference.ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-1]
		if v, ok := env[strings.TrimPrefix(name, "env.")]; ok {
			return v
		}
		return m
	})
}

// taskDirEnv sets NOMAD_ALLOC_DIR, NOMAD_TASK_DIR and NOMAD_SECRETS_DIR as
// Nomad's task_dir_hook does for the driver's filesystem isolation.
func taskDirEnv(env map[string]string, isolation driverpb.DriverCapabilities_FSIsolation, allocDir, task string) {
	dirs := map[string]string{
		"NOMAD_ALLOC_DIR":   "/alloc",
		"NOMAD_TASK_DIR":    "/local",
		"NOMAD_SECRETS_DIR": "/secrets",
	}
	if isolation == driverpb.DriverCapabilities_NONE && allocDir != "" {
		dirs = map[string]string{
			"NOMAD_ALLOC_DIR":   filepath.Join(allocDir, "alloc"),
			"NOMAD_TASK_DIR":    filepath.Join(allocDir, task, "local"),
			"NOMAD_SECRETS_DIR": filepath.Join(allocDir, task, "secrets"),
		}
	}
	for k, v := range dirs {
		if _, ok := env[k]; !ok {
			env[k] = v
		}
	}
}

// hookEnv adds the env block to the environment (interpolated with it).
func hookEnv(env map[string]string, hooks taskHooks) {
	keys := make([]string, 0, len(hooks.Env))
	for k := range hooks.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	base := map[string]string{}
	for k, v := range env {
		base[k] = v
	}
	for _, k := range keys {
		env[k] = replaceEnv(hooks.Env[k], base)
	}
}

// insideTaskDir resolves a destination relative to the task directory and
// refuses one that escapes it (Nomad refuses those unless configured not to).
func insideTaskDir(taskDir, dest string) (string, error) {
	full := filepath.Join(taskDir, dest)
	if full != taskDir && !strings.HasPrefix(full, taskDir+string(filepath.Separator)) {
		return "", fmt.Errorf("destination %q escapes the task directory", dest)
	}
	return full, nil
}

// runArtifacts fetches every artifact (http and https only).
func runArtifacts(taskDir string, hooks taskHooks, env map[string]string) error {
	client := &http.Client{Timeout: 60 * time.Second}
	for _, a := range hooks.Artifacts {
		source := replaceEnv(a.Source, env)
		u, err := url.Parse(source)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			return fmt.Errorf("artifact %q: nomadsim fetches only http(s) sources", source)
		}
		dest, err := insideTaskDir(taskDir, replaceEnv(a.Destination, env))
		if err != nil {
			return fmt.Errorf("artifact %q: %v", source, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, source, nil)
		resp, err := client.Do(req)
		if err != nil {
			cancel()
			return fmt.Errorf("artifact %q: %v", source, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("artifact %q: bad response %d (%v)", source, resp.StatusCode, err)
		}
		if err := placeArtifact(body, u.Path, dest, a.Mode); err != nil {
			return fmt.Errorf("artifact %q: %v", source, err)
		}
	}
	return nil
}

func placeArtifact(body []byte, urlPath, dest, mode string) error {
	name := path.Base(urlPath)
	if mode == "file" {
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dest, body, 0o644)
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		return err
	}
	switch {
	case strings.HasSuffix(name, ".tar.gz") || strings.HasSuffix(name, ".tgz"):
		return untarGz(body, dest)
	case strings.HasSuffix(name, ".zip"):
		return unzip(body, dest)
	}
	return os.WriteFile(filepath.Join(dest, name), body, 0o644)
}

func untarGz(body []byte, dest string) error {
	gz, err := gzip.NewReader(bytes.NewReader(body))
	if err != nil {
		return err
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		target, err := insideTaskDir(dest, h.Name)
		if err != nil {
			return err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return err
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				return err
			}
			if err := os.WriteFile(target, data, os.FileMode(h.Mode)&0o777); err != nil {
				return err
			}
		}
	}
}

func unzip(body []byte, dest string) error {
	zr, err := zip.NewReader(bytes.NewReader(body), int64(len(body)))
	if err != nil {
		return err
	}
	for _, f := range zr.File {
		target, err := insideTaskDir(dest, f.Name)
		if err != nil {
			return err
		}
		if f.FileInfo().IsDir() {
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			continue
		}
		rc, err := f.Open()
		if err != nil {
			return err
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(target, data, f.Mode()&0o777); err != nil {
			return err
		}
	}
	return nil
}

// runTemplates renders every template into the task directory and returns
// the variables of the env = true ones. nomadVar reads the Nomad variables
// the test gave (path -> items); a missing one is an error here, where Nomad
// would wait for it and never start the task.
func runTemplates(taskDir string, hooks taskHooks, env map[string]string,
	vars map[string]map[string]string) (map[string]string, error) {
	fromTemplates := map[string]string{}
	funcs := template.FuncMap{
		"env": func(name string) string { return env[name] },
		"nomadVar": func(path string) (map[string]string, error) {
			items, ok := vars[path]
			if !ok {
				return nil, fmt.Errorf("Nomad variable %q does not exist (Nomad would wait for it; pass nomad_vars)", path)
			}
			return items, nil
		},
	}
	for i, t := range hooks.Templates {
		tmpl, err := template.New(fmt.Sprintf("template[%d]", i)).Funcs(funcs).Parse(t.Data)
		if err != nil {
			return nil, fmt.Errorf("template[%d]: %v", i, err)
		}
		var out bytes.Buffer
		if err := tmpl.Execute(&out, nil); err != nil {
			return nil, fmt.Errorf("template[%d]: %v", i, err)
		}
		dest, err := insideTaskDir(taskDir, replaceEnv(t.Destination, env))
		if err != nil {
			return nil, fmt.Errorf("template[%d]: %v", i, err)
		}
		perms, err := strconv.ParseUint(t.Perms, 8, 32)
		if err != nil {
			return nil, fmt.Errorf("template[%d]: perms %q: %v", i, t.Perms, err)
		}
		if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(dest, out.Bytes(), os.FileMode(perms)); err != nil {
			return nil, err
		}
		if err := os.Chmod(dest, os.FileMode(perms)); err != nil {
			return nil, err
		}
		if t.Env {
			for k, v := range parseEnvFile(out.Bytes()) {
				fromTemplates[k] = v
			}
		}
	}
	return fromTemplates, nil
}

// parseEnvFile reads KEY=VALUE lines: blank lines and # comments are
// skipped, an optional `export ` prefix is dropped, and single or double
// quotes around the value are removed (as go-envparse does for these cases).
func parseEnvFile(data []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		if len(value) >= 2 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
			value = value[1 : len(value)-1]
		}
		out[strings.TrimSpace(key)] = value
	}
	return out
}
