package main

// HCL parsing of agent configs and job files, decoding with the plugin's
// converted spec and go-cty msgpack encoding, as Nomad's agent and client do.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"sort"
	"strings"

	"github.com/golang/protobuf/jsonpb"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
	ctymsgpack "github.com/zclconf/go-cty/cty/msgpack"

	basepb "nomadsim/gen/base"
	driverpb "nomadsim/gen/drivers"
	hclspecpb "nomadsim/gen/hclspec"
)

// encoded is a decoded config value in the forms tests care about.
type encoded struct {
	Msgpack    []byte
	Value      cty.Value
	ConfigJSON []byte // what Nomad's client would hold (nomad mode only)
}

func (e encoded) toJSON() (map[string]interface{}, error) {
	js, err := ctyjson.Marshal(e.Value, e.Value.Type())
	if err != nil {
		return nil, localErrorf("encoding value as JSON: %v", err)
	}
	ty, err := ctyjson.MarshalType(e.Value.Type())
	if err != nil {
		return nil, localErrorf("encoding type as JSON: %v", err)
	}
	out := map[string]interface{}{
		"msgpack_b64": base64.StdEncoding.EncodeToString(e.Msgpack),
		"json":        json.RawMessage(js),
		"type":        json.RawMessage(ty),
		"config_json": nil,
	}
	if e.ConfigJSON != nil {
		out["config_json"] = json.RawMessage(e.ConfigJSON)
	}
	return out, nil
}

// decodeBody decodes body with spec and encodes the result like Nomad:
// ctymsgpack.Marshal(val, val.Type()).
func decodeBody(spec hcldec.Spec, body hcl.Body, ctx *hcl.EvalContext, what string) (encoded, error) {
	val, diags := hcldec.Decode(body, spec, ctx)
	if diags.HasErrors() {
		return encoded{}, &diagError{context: what, diags: diags}
	}
	return marshalValue(val, what)
}

func marshalValue(val cty.Value, what string) (encoded, error) {
	b, err := ctymsgpack.Marshal(val, val.Type())
	if err != nil {
		return encoded{}, localErrorf("%s: msgpack encoding: %v", what, err)
	}
	return encoded{Msgpack: b, Value: val}, nil
}

// decodeConfig decodes a native-syntax config body either through Nomad's
// pipeline (mode "nomad", the default; see nomadpipe.go) or directly with
// hcldec (mode "native").
func decodeConfig(mode string, body hcl.Body, src []byte, submitCtx *hcl.EvalContext, spec hcldec.Spec,
	clientCtx *hcl.EvalContext, what string) (encoded, error) {
	switch mode {
	case "", "nomad":
		enc, js, err := nomadPipeline(body, src, submitCtx, spec, clientCtx, what)
		enc.ConfigJSON = js
		return enc, err
	case "native":
		return decodeBody(spec, body, clientCtx, what)
	default:
		return encoded{}, localErrorf("unknown mode %q (nomad or native)", mode)
	}
}

func emptyBody() hcl.Body {
	f, _ := hclsyntax.ParseConfig(nil, "empty.hcl", hcl.Pos{Line: 1, Column: 1})
	return f.Body
}

// envEvalContext builds the variables Nomad's client offers to task config
// interpolation: every env key as a top-level variable (dotted keys such as
// "attr.kernel.name" become nested objects), an "env" map, and "var" (HCL2
// job variables, which jobspec2 resolves at submit time).
func envEvalContext(env map[string]string, vars map[string]cty.Value) *hcl.EvalContext {
	variables := map[string]cty.Value{}
	tree := map[string]interface{}{}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic: "a" is placed before "a.b"
	for _, k := range keys {
		insertDotted(tree, strings.Split(k, "."), env[k])
	}
	for k, v := range tree {
		if val, ok := treeToCty(v); ok {
			variables[k] = val
		}
	}
	envMap := map[string]cty.Value{}
	for k, v := range env {
		envMap[k] = cty.StringVal(v)
	}
	if len(envMap) == 0 {
		variables["env"] = cty.MapValEmpty(cty.String)
	} else {
		variables["env"] = cty.MapVal(envMap)
	}
	if len(vars) > 0 {
		variables["var"] = cty.ObjectVal(vars)
	}
	return &hcl.EvalContext{Variables: variables, Functions: nomadFuncs()}
}

func insertDotted(tree map[string]interface{}, parts []string, val string) {
	for i, p := range parts {
		if p == "" {
			return
		}
		if i == len(parts)-1 {
			if _, exists := tree[p]; !exists {
				tree[p] = val
			}
			return
		}
		next, ok := tree[p].(map[string]interface{})
		if !ok {
			if _, isLeaf := tree[p]; isLeaf {
				return // conflicts with a plain key; the plain key wins
			}
			next = map[string]interface{}{}
			tree[p] = next
		}
		tree = next
	}
}

func treeToCty(v interface{}) (cty.Value, bool) {
	switch t := v.(type) {
	case string:
		return cty.StringVal(t), true
	case map[string]interface{}:
		attrs := map[string]cty.Value{}
		for k, sub := range t {
			if c, ok := treeToCty(sub); ok {
				attrs[k] = c
			}
		}
		return cty.ObjectVal(attrs), true
	}
	return cty.NilVal, false
}

// jsonToCty converts arbitrary JSON values (test-supplied job variables).
func jsonToCty(raw json.RawMessage) (cty.Value, error) {
	ty, err := ctyjson.ImpliedType(raw)
	if err != nil {
		return cty.NilVal, err
	}
	return ctyjson.Unmarshal(raw, ty)
}

func jsonVars(in map[string]json.RawMessage) (map[string]cty.Value, error) {
	out := map[string]cty.Value{}
	for k, raw := range in {
		v, err := jsonToCty(raw)
		if err != nil {
			return nil, localErrorf("variable %q: %v", k, err)
		}
		out[k] = v
	}
	return out, nil
}

// ---- set_config ----------------------------------------------------------

type setConfigArgs struct {
	Plugin          string  `json:"plugin"`
	HCL             string  `json:"hcl"`
	Name            string  `json:"name"`
	WithNomadConfig bool    `json:"with_nomad_config"`
	APIVersion      *string `json:"api_version"`
	MsgpackB64      *string `json:"msgpack_b64"`
	Mode            string  `json:"mode"`
	// Topology replaces the host's (jsonpb ClientTopology); NoTopology sends
	// none, as Nomad before 1.7 did.
	Topology   json.RawMessage `json:"topology"`
	NoTopology bool            `json:"no_topology"`
}

// pluginConfigBody finds `plugin "NAME" { config { ... } }` in an agent
// config; no plugin or config block means an empty body (Nomad parses {}).
func pluginConfigBody(src, name string) (hcl.Body, error) {
	if strings.TrimSpace(src) == "" {
		return emptyBody(), nil
	}
	f, diags := hclsyntax.ParseConfig([]byte(src), "agent.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		return nil, &diagError{context: "parsing agent config", diags: diags}
	}
	content, _, diags := f.Body.PartialContent(&hcl.BodySchema{
		Blocks: []hcl.BlockHeaderSchema{{Type: "plugin", LabelNames: []string{"name"}}},
	})
	if diags.HasErrors() {
		return nil, &diagError{context: "parsing agent config", diags: diags}
	}
	var block *hcl.Block
	for _, b := range content.Blocks {
		if name == "" || b.Labels[0] == name {
			block = b
			break
		}
	}
	if block == nil {
		if name != "" {
			return nil, localErrorf("agent config has no plugin %q block", name)
		}
		return emptyBody(), nil
	}
	inner, _, diags := block.Body.PartialContent(&hcl.BodySchema{
		Blocks: []hcl.BlockHeaderSchema{{Type: "config"}},
	})
	if diags.HasErrors() {
		return nil, &diagError{context: "parsing plugin block", diags: diags}
	}
	switch len(inner.Blocks) {
	case 0:
		return emptyBody(), nil
	case 1:
		return inner.Blocks[0].Body, nil
	default:
		return nil, localErrorf("plugin %q block has %d config blocks", block.Labels[0], len(inner.Blocks))
	}
}

func opSetConfig(s *sim, raw json.RawMessage) (interface{}, error) {
	var a setConfigArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	result := map[string]interface{}{"msgpack_b64": "", "json": nil}
	var msgpack []byte
	if a.MsgpackB64 != nil {
		if msgpack, err = base64.StdEncoding.DecodeString(*a.MsgpackB64); err != nil {
			return nil, localErrorf("bad msgpack_b64: %v", err)
		}
	} else {
		schema, err := p.base.ConfigSchema(ctx, &basepb.ConfigSchemaRequest{})
		if err != nil {
			return nil, err
		}
		if schema.GetSpec() != nil {
			spec, diags := convertSpec(schema.GetSpec())
			if diags.HasErrors() {
				return nil, &diagError{context: "converting ConfigSchema", diags: diags}
			}
			body, err := pluginConfigBody(a.HCL, a.Name)
			if err != nil {
				return nil, err
			}
			// HCL1 leaves interpolations as text; the client decodes with
			// functions but no variables.
			enc, err := decodeConfig(a.Mode, body, []byte(a.HCL), &hcl.EvalContext{Functions: nomadFuncs()},
				spec, &hcl.EvalContext{Functions: nomadFuncs()}, "plugin config")
			if err != nil {
				return nil, err
			}
			msgpack = enc.Msgpack
			if result, err = enc.toJSON(); err != nil {
				return nil, err
			}
		}
	}
	req := &basepb.SetConfigRequest{MsgpackConfig: msgpack, PluginApiVersion: "v0.1.0"}
	if a.APIVersion != nil {
		req.PluginApiVersion = *a.APIVersion
	}
	if a.WithNomadConfig {
		driver := &basepb.NomadDriverConfig{ClientMinPort: 14000, ClientMaxPort: 14512}
		if !a.NoTopology {
			driver.Topology = hostTopology()
			if len(a.Topology) > 0 && string(a.Topology) != "null" {
				driver.Topology = &basepb.ClientTopology{}
				if err := pbFromJSON(a.Topology, driver.Topology); err != nil {
					return nil, err
				}
			}
			s.mu.Lock()
			s.topologies[pick(a.Plugin, "default")] = driver.Topology
			s.mu.Unlock()
		} else {
			s.mu.Lock()
			delete(s.topologies, pick(a.Plugin, "default"))
			s.mu.Unlock()
		}
		req.NomadConfig = &basepb.NomadConfig{Driver: driver}
	}
	if _, err := p.base.SetConfig(ctx, req); err != nil {
		return nil, err
	}
	return result, nil
}

// ---- job files -------------------------------------------------------------

type jobTask struct {
	Hooks                    taskHooks
	Job, Group, Name, Driver string
	Config                   hcl.Body
}

type parsedJob struct {
	src       []byte
	tasks     []jobTask
	submitCtx *hcl.EvalContext // var.*, local.* and functions (jobspec2)
}

// parseJob reads a Nomad job file with a permissive schema: job > group >
// task blocks, each task's driver attribute and config block, plus the
// top-level variable/variables/locals blocks jobspec2 evaluates at submit
// time. Everything else is ignored.
func parseJob(src []byte, filename string, overrides map[string]cty.Value) (*parsedJob, error) {
	f, diags := hclsyntax.ParseConfig(src, filename, hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		return nil, &diagError{context: "parsing job file", diags: diags}
	}
	fail := func(d hcl.Diagnostics) error { return &diagError{context: "parsing job file", diags: d} }
	root, _, diags := f.Body.PartialContent(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
		{Type: "job", LabelNames: []string{"name"}},
		{Type: "variable", LabelNames: []string{"name"}},
		{Type: "variables"},
		{Type: "locals"},
	}})
	if diags.HasErrors() {
		return nil, fail(diags)
	}
	funcsOnly := &hcl.EvalContext{Functions: nomadFuncs()}
	vars := map[string]cty.Value{}
	var localAttrs []*hcl.Attribute
	for _, b := range root.Blocks {
		switch b.Type {
		case "variable":
			vc, _, diags := b.Body.PartialContent(&hcl.BodySchema{Attributes: []hcl.AttributeSchema{{Name: "default"}}})
			if diags.HasErrors() {
				return nil, fail(diags)
			}
			vars[b.Labels[0]] = cty.DynamicVal
			if attr, ok := vc.Attributes["default"]; ok {
				v, diags := attr.Expr.Value(funcsOnly)
				if diags.HasErrors() {
					return nil, fail(diags)
				}
				vars[b.Labels[0]] = v
			}
		case "variables":
			attrs, diags := b.Body.JustAttributes()
			if diags.HasErrors() {
				return nil, fail(diags)
			}
			for name, attr := range attrs {
				v, diags := attr.Expr.Value(funcsOnly)
				if diags.HasErrors() {
					return nil, fail(diags)
				}
				vars[name] = v
			}
		case "locals":
			attrs, diags := b.Body.JustAttributes()
			if diags.HasErrors() {
				return nil, fail(diags)
			}
			for _, attr := range attrs {
				localAttrs = append(localAttrs, attr)
			}
		}
	}
	for k, v := range overrides {
		vars[k] = v
	}
	locals := map[string]cty.Value{}
	ctx := func() *hcl.EvalContext {
		return &hcl.EvalContext{Functions: nomadFuncs(), Variables: map[string]cty.Value{
			"var": cty.ObjectVal(vars), "local": cty.ObjectVal(locals),
		}}
	}
	// locals may refer to each other: evaluate until nothing changes
	pending := localAttrs
	for len(pending) > 0 {
		var again []*hcl.Attribute
		var lastDiags hcl.Diagnostics
		for _, attr := range pending {
			v, diags := attr.Expr.Value(ctx())
			if diags.HasErrors() {
				again = append(again, attr)
				lastDiags = diags
				continue
			}
			locals[attr.Name] = v
		}
		if len(again) == len(pending) {
			return nil, fail(lastDiags)
		}
		pending = again
	}

	job := &parsedJob{src: src, submitCtx: ctx()}
	for _, jb := range root.Blocks {
		if jb.Type != "job" {
			continue
		}
		jc, _, diags := jb.Body.PartialContent(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: "group", LabelNames: []string{"name"}}}})
		if diags.HasErrors() {
			return nil, fail(diags)
		}
		for _, gb := range jc.Blocks {
			gc, _, diags := gb.Body.PartialContent(&hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{{Type: "task", LabelNames: []string{"name"}}}})
			if diags.HasErrors() {
				return nil, fail(diags)
			}
			for _, tb := range gc.Blocks {
				tc, _, diags := tb.Body.PartialContent(&hcl.BodySchema{
					Attributes: []hcl.AttributeSchema{{Name: "driver"}},
					Blocks: []hcl.BlockHeaderSchema{
						{Type: "config"}, {Type: "env"}, {Type: "template"}, {Type: "artifact"},
					},
				})
				if diags.HasErrors() {
					return nil, fail(diags)
				}
				t := jobTask{Job: jb.Labels[0], Group: gb.Labels[0], Name: tb.Labels[0], Config: emptyBody()}
				var configs, hookBlocks hcl.Blocks
				for _, b := range tc.Blocks {
					if b.Type == "config" {
						configs = append(configs, b)
					} else {
						hookBlocks = append(hookBlocks, b)
					}
				}
				tc.Blocks = configs
				if t.Hooks, diags = parseTaskHooks(hookBlocks, src, job.submitCtx); diags.HasErrors() {
					return nil, fail(diags)
				}
				if attr, ok := tc.Attributes["driver"]; ok {
					v, diags := attr.Expr.Value(job.submitCtx)
					if diags.HasErrors() {
						return nil, fail(diags)
					}
					if v.Type() == cty.String && v.IsKnown() && !v.IsNull() {
						t.Driver = v.AsString()
					}
				}
				switch len(tc.Blocks) {
				case 0:
				case 1:
					t.Config = tc.Blocks[0].Body
				default:
					r := tc.Blocks[1].DefRange
					return nil, fail(hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Duplicate config block",
						Detail: "a task may have only one config block", Subject: &r}})
				}
				job.tasks = append(job.tasks, t)
			}
		}
	}
	return job, nil
}

// taskSpec fetches and converts the plugin's TaskConfigSchema.
func taskSpec(ctx context.Context, p *pluginInst) (hcldec.Spec, error) {
	resp, err := p.driver.TaskConfigSchema(ctx, &driverpb.TaskConfigSchemaRequest{})
	if err != nil {
		return nil, err
	}
	spec, diags := convertSpec(resp.GetSpec())
	if diags.HasErrors() {
		return nil, &diagError{context: "converting TaskConfigSchema", diags: diags}
	}
	return spec, nil
}

// jobDefaultsEnv adds the NOMAD_* identity variables a job file implies.
func jobDefaultsEnv(env map[string]string, t jobTask) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	defaults := map[string]string{
		"NOMAD_JOB_NAME":   t.Job,
		"NOMAD_JOB_ID":     t.Job,
		"NOMAD_GROUP_NAME": t.Group,
		"NOMAD_TASK_NAME":  t.Name,
		"NOMAD_NAMESPACE":  "default",
	}
	for k, v := range defaults {
		if _, ok := out[k]; !ok {
			out[k] = v
		}
	}
	return out
}

type encodeJobArgs struct {
	Plugin   string                     `json:"plugin"`
	JobFile  string                     `json:"job_file"`
	JobHCL   string                     `json:"job_hcl"`
	TaskName string                     `json:"task_name"`
	Driver   string                     `json:"driver"`
	Env      map[string]string          `json:"env"`
	Vars     map[string]json.RawMessage `json:"vars"`
	Mode     string                     `json:"mode"`
}

// encodeJobTasks decodes the selected tasks' config blocks.
func encodeJobTasks(ctx context.Context, p *pluginInst, a encodeJobArgs) (map[string]encoded, error) {
	src := []byte(a.JobHCL)
	filename := "job.nomad.hcl"
	if a.JobFile != "" {
		var err error
		if src, err = os.ReadFile(a.JobFile); err != nil {
			return nil, localErrorf("reading job file: %v", err)
		}
		filename = a.JobFile
	}
	overrides, err := jsonVars(a.Vars)
	if err != nil {
		return nil, err
	}
	job, err := parseJob(src, filename, overrides)
	if err != nil {
		return nil, err
	}
	driver := a.Driver
	if driver == "" {
		driver = "tart"
	}
	var selected []jobTask
	for _, t := range job.tasks {
		if (a.TaskName != "" && t.Name == a.TaskName) || (a.TaskName == "" && t.Driver == driver) {
			selected = append(selected, t)
		}
	}
	if len(selected) == 0 {
		if a.TaskName != "" {
			return nil, localErrorf("job has no task %q", a.TaskName)
		}
		return nil, localErrorf("job has no task with driver %q", driver)
	}
	spec, err := taskSpec(ctx, p)
	if err != nil {
		return nil, err
	}
	out := map[string]encoded{}
	for _, t := range selected {
		clientCtx := envEvalContext(jobDefaultsEnv(a.Env, t), nil)
		enc, err := decodeConfig(a.Mode, t.Config, job.src, job.submitCtx, spec, clientCtx,
			"Failed Validation: task "+t.Name+" config")
		if err != nil {
			return nil, err
		}
		out[t.Name] = enc
	}
	return out, nil
}

func opEncodeJob(s *sim, raw json.RawMessage) (interface{}, error) {
	var a encodeJobArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	if a.JobFile == "" && a.JobHCL == "" {
		return nil, localErrorf("encode_job needs job_file or job_hcl")
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	encs, err := encodeJobTasks(context.Background(), p, a)
	if err != nil {
		return nil, err
	}
	tasks := map[string]interface{}{}
	for name, enc := range encs {
		j, err := enc.toJSON()
		if err != nil {
			return nil, err
		}
		tasks[name] = j
	}
	return map[string]interface{}{"tasks": tasks}, nil
}

// ---- decode_spec: converter check without a plugin -------------------------

type decodeSpecArgs struct {
	Spec json.RawMessage            `json:"spec"`
	HCL  string                     `json:"hcl"`
	Env  map[string]string          `json:"env"`
	Vars map[string]json.RawMessage `json:"vars"`
	Mode string                     `json:"mode"`
}

func opDecodeSpec(_ *sim, raw json.RawMessage) (interface{}, error) {
	var a decodeSpecArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	var pb hclspecpb.Spec
	if err := jsonpb.Unmarshal(bytes.NewReader(a.Spec), &pb); err != nil {
		return nil, localErrorf("bad spec JSON: %v", err)
	}
	spec, diags := convertSpec(&pb)
	if diags.HasErrors() {
		return nil, &diagError{context: "converting spec", diags: diags}
	}
	f, diags := hclsyntax.ParseConfig([]byte(a.HCL), "config.hcl", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		return nil, &diagError{context: "parsing config", diags: diags}
	}
	vars, err := jsonVars(a.Vars)
	if err != nil {
		return nil, err
	}
	submitCtx := &hcl.EvalContext{Functions: nomadFuncs(), Variables: map[string]cty.Value{
		"var": cty.ObjectVal(vars), "local": cty.EmptyObjectVal,
	}}
	clientCtx := envEvalContext(a.Env, nil)
	if a.Mode == "native" {
		clientCtx = envEvalContext(a.Env, vars)
	}
	enc, err := decodeConfig(a.Mode, f.Body, []byte(a.HCL), submitCtx, spec, clientCtx, "decoding config")
	if err != nil {
		return nil, err
	}
	return enc.toJSON()
}
