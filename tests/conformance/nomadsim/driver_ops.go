package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"reflect"
	"strconv"
	"sync"
	"time"

	"github.com/golang/protobuf/jsonpb"
	"github.com/golang/protobuf/proto"
	"github.com/golang/protobuf/ptypes"

	basepb "nomadsim/gen/base"
	driverpb "nomadsim/gen/drivers"
	hclspecpb "nomadsim/gen/hclspec"
)

var pbMarshaler = jsonpb.Marshaler{OrigName: true, EmitDefaults: true}

// pbJSON renders a protobuf message with proto field names; nil -> null.
func pbJSON(m proto.Message) json.RawMessage {
	if m == nil {
		return json.RawMessage("null")
	}
	if v := reflect.ValueOf(m); v.Kind() == reflect.Ptr && v.IsNil() {
		return json.RawMessage("null")
	}
	var buf bytes.Buffer
	if err := pbMarshaler.Marshal(&buf, m); err != nil {
		b, _ := json.Marshal(map[string]string{"jsonpb_error": err.Error()})
		return b
	}
	return buf.Bytes()
}

func pbFromJSON(raw json.RawMessage, m proto.Message) error {
	if err := jsonpb.Unmarshal(bytes.NewReader(raw), m); err != nil {
		return localErrorf("cannot decode %T from JSON: %v", m, err)
	}
	return nil
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// ---- base plugin -----------------------------------------------------------

func opPluginInfo(s *sim, raw json.RawMessage) (interface{}, error) {
	var a pluginArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	resp, err := p.base.PluginInfo(context.Background(), &basepb.PluginInfoRequest{})
	if err != nil {
		return nil, err
	}
	return pbJSON(resp), nil
}

func opConfigSchema(s *sim, raw json.RawMessage) (interface{}, error) {
	var a pluginArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	resp, err := p.base.ConfigSchema(context.Background(), &basepb.ConfigSchemaRequest{})
	if err != nil {
		return nil, err
	}
	return specResult(resp.GetSpec(), true), nil
}

// ---- driver unary ----------------------------------------------------------

func opInit(s *sim, raw json.RawMessage) (interface{}, error) {
	var a pluginArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	resp, err := p.driver.Init(context.Background(), &driverpb.InitRequest{})
	if err != nil {
		return nil, err
	}
	return pbJSON(resp), nil
}

func opTaskConfigSchema(s *sim, raw json.RawMessage) (interface{}, error) {
	var a pluginArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	resp, err := p.driver.TaskConfigSchema(context.Background(), &driverpb.TaskConfigSchemaRequest{})
	if err != nil {
		return nil, err
	}
	return specResult(resp.GetSpec(), false), nil
}

// specResult reports the spec and whether it converts to an hcldec spec.
// A nil spec is fine for ConfigSchema (no plugin config) but an error for
// TaskConfigSchema ("nil spec given").
func specResult(spec *hclspecpb.Spec, nilOK bool) map[string]interface{} {
	out := map[string]interface{}{"spec": pbJSON(spec), "valid": true, "diagnostics": nil}
	if spec == nil && nilOK {
		return out
	}
	if _, diags := convertSpec(spec); diags.HasErrors() {
		out["valid"] = false
		out["diagnostics"] = diagsToJSON(diags)
		out["error"] = diags.Error()
	}
	return out
}

func opCapabilities(s *sim, raw json.RawMessage) (interface{}, error) {
	var a pluginArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	resp, err := p.driver.Capabilities(context.Background(), &driverpb.CapabilitiesRequest{})
	if err != nil {
		return nil, err
	}
	return pbJSON(resp), nil
}

func opShutdownDriver(s *sim, raw json.RawMessage) (interface{}, error) {
	var a pluginArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	timeout := 2 * time.Second // Nomad's driverShutdownTimeout
	if a.TimeoutSeconds > 0 {
		timeout = seconds(a.TimeoutSeconds)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	resp, err := p.driver.Shutdown(ctx, &driverpb.ShutdownRequest{})
	if err != nil {
		return nil, err
	}
	return map[string]interface{}{"response": pbJSON(resp), "seconds": time.Since(start).Seconds()}, nil
}

type networkArgs struct {
	Plugin        string          `json:"plugin"`
	AllocID       string          `json:"alloc_id"`
	Hostname      string          `json:"hostname"`
	IsolationSpec json.RawMessage `json:"isolation_spec"`
}

func opCreateNetwork(s *sim, raw json.RawMessage) (interface{}, error) {
	var a networkArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	resp, err := p.driver.CreateNetwork(context.Background(), &driverpb.CreateNetworkRequest{AllocId: a.AllocID, Hostname: a.Hostname})
	if err != nil {
		return nil, err
	}
	return pbJSON(resp), nil
}

func opDestroyNetwork(s *sim, raw json.RawMessage) (interface{}, error) {
	var a networkArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	req := &driverpb.DestroyNetworkRequest{AllocId: a.AllocID}
	if len(a.IsolationSpec) > 0 && string(a.IsolationSpec) != "null" {
		req.IsolationSpec = &driverpb.NetworkIsolationSpec{}
		if err := pbFromJSON(a.IsolationSpec, req.IsolationSpec); err != nil {
			return nil, err
		}
	}
	resp, err := p.driver.DestroyNetwork(context.Background(), req)
	if err != nil {
		return nil, err
	}
	return pbJSON(resp), nil
}

// ---- streams ---------------------------------------------------------------

type streamState struct {
	id        int64
	kind      string
	ctx       context.Context
	cancel    context.CancelFunc
	cancelled bool
	// fields added to each message (the node after a fingerprint)
	annotate func() map[string]interface{}

	// exec streaming only
	sendMu sync.Mutex
	exec   driverpb.Driver_ExecTaskStreamingClient
}

// streamOpen is returned by ops that open a stream; the dispatcher emits
// the reply and then calls afterReply, so stream messages always follow it.
type streamOpen struct {
	st    *streamState
	recv  func() (proto.Message, error)
	extra map[string]interface{}
	s     *sim
}

func (o *streamOpen) MarshalJSON() ([]byte, error) {
	out := map[string]interface{}{"stream": o.st.id}
	for k, v := range o.extra {
		out[k] = v
	}
	return json.Marshal(out)
}

func (o *streamOpen) afterReply() {
	go o.s.pump(o.st, o.recv)
}

func (s *sim) newStream(kind string) *streamState {
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextSID++
	st := &streamState{id: s.nextSID, kind: kind, ctx: ctx, cancel: cancel}
	s.streams[st.id] = st
	return st
}

func (s *sim) dropStream(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, id)
}

func (s *sim) stream(id int64) (*streamState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[id]
	if !ok {
		return nil, localErrorf("no open stream %d", id)
	}
	return st, nil
}

// pump forwards every received message, then an end marker.
func (s *sim) pump(st *streamState, recv func() (proto.Message, error)) {
	defer s.dropStream(st.id)
	defer st.cancel()
	for {
		msg, err := recv()
		if err != nil {
			end := map[string]interface{}{"stream": st.id, "end": true, "error": nil}
			if err != io.EOF {
				for k, v := range describeError(err) {
					end[k] = v
				}
			}
			s.mu.Lock()
			end["cancelled_by_client"] = st.cancelled
			s.mu.Unlock()
			s.emit(end)
			return
		}
		out := map[string]interface{}{"stream": st.id, "msg": pbJSON(msg)}
		if st.annotate != nil {
			for k, v := range st.annotate() {
				out[k] = v
			}
		}
		s.emit(out)
	}
}

type streamArgs struct {
	Plugin string `json:"plugin"`
	Stream int64  `json:"stream"`
}

func opFingerprint(s *sim, raw json.RawMessage) (interface{}, error) {
	var a streamArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	node := s.node(pluginName(a.Plugin))
	node.awaitDead(p, 10*time.Second)
	st := s.newStream("fingerprint")
	cl, err := p.driver.Fingerprint(st.ctx, &driverpb.FingerprintRequest{})
	if err != nil {
		st.cancel()
		s.dropStream(st.id)
		return nil, err
	}
	recv := s.nodeRecv(node, node.watch(p), st, cl.Recv)
	st.annotate = func() map[string]interface{} { return map[string]interface{}{"node": node.snapshot()} }
	return &streamOpen{s: s, st: st, recv: func() (proto.Message, error) { return recv() }}, nil
}

func opTaskEvents(s *sim, raw json.RawMessage) (interface{}, error) {
	var a streamArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	st := s.newStream("task_events")
	cl, err := p.driver.TaskEvents(st.ctx, &driverpb.TaskEventsRequest{})
	if err != nil {
		st.cancel()
		s.dropStream(st.id)
		return nil, err
	}
	recv := func() (proto.Message, error) {
		ev, err := cl.Recv()
		if err == nil {
			driverEvent(ev)
		}
		return ev, err
	}
	return &streamOpen{s: s, st: st, recv: recv}, nil
}

type taskStatsArgs struct {
	Plugin          string  `json:"plugin"`
	TaskID          string  `json:"task_id"`
	IntervalSeconds float64 `json:"interval_seconds"`
}

func opTaskStats(s *sim, raw json.RawMessage) (interface{}, error) {
	var a taskStatsArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	interval := a.IntervalSeconds
	if interval <= 0 {
		interval = 1 // Nomad's telemetry.collection_interval default
	}
	st := s.newStream("task_stats")
	cl, err := p.driver.TaskStats(st.ctx, &driverpb.TaskStatsRequest{
		TaskId: a.TaskID, CollectionInterval: ptypes.DurationProto(seconds(interval)),
	})
	if err != nil {
		st.cancel()
		s.dropStream(st.id)
		return nil, err
	}
	host := computeOf(s.topologyFor(a.Plugin))
	recv := func() (proto.Message, error) {
		msg, err := cl.Recv()
		if err == nil {
			if bad := checkStats(msg, host); bad != nil {
				st.cancel()
				return nil, localErrorf("TaskStats: %v", bad)
			}
		}
		return msg, err
	}
	return &streamOpen{s: s, st: st, recv: recv}, nil
}

func opCloseStream(s *sim, raw json.RawMessage) (interface{}, error) {
	var a streamArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	st, err := s.stream(a.Stream)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	st.cancelled = true
	s.mu.Unlock()
	st.cancel()
	return map[string]interface{}{"stream": st.id}, nil
}

// ---- exec ------------------------------------------------------------------

type execArgs struct {
	Plugin         string   `json:"plugin"`
	TaskID         string   `json:"task_id"`
	Command        []string `json:"command"`
	TimeoutSeconds float64  `json:"timeout_seconds"`
	TTY            bool     `json:"tty"`
	Stream         int64    `json:"stream"`
	DataB64        string   `json:"data_b64"`
	Data           *string  `json:"data"`
	Height         int32    `json:"height"`
	Width          int32    `json:"width"`
}

func opExecTask(s *sim, raw json.RawMessage) (interface{}, error) {
	var a execArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := p.driver.ExecTask(context.Background(), &driverpb.ExecTaskRequest{
		TaskId: a.TaskID, Command: a.Command, Timeout: ptypes.DurationProto(seconds(a.TimeoutSeconds)),
	})
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{
		"response":   pbJSON(resp),
		"stdout_b64": base64.StdEncoding.EncodeToString(resp.GetStdout()),
		"stderr_b64": base64.StdEncoding.EncodeToString(resp.GetStderr()),
		"exit_code":  nil,
		"seconds":    time.Since(start).Seconds(),
	}
	if resp.GetResult() != nil {
		out["exit_code"] = resp.GetResult().GetExitCode()
	}
	return out, nil
}

func opExecStreaming(s *sim, raw json.RawMessage) (interface{}, error) {
	var a execArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	st := s.newStream("exec")
	cl, err := p.driver.ExecTaskStreaming(st.ctx)
	if err != nil {
		st.cancel()
		s.dropStream(st.id)
		return nil, err
	}
	st.exec = cl
	// Like Nomad's client: the first message is always the setup.
	if err := cl.Send(&driverpb.ExecTaskStreamingRequest{Setup: &driverpb.ExecTaskStreamingRequest_Setup{
		TaskId: a.TaskID, Command: a.Command, Tty: a.TTY,
	}}); err != nil {
		st.cancel()
		s.dropStream(st.id)
		return nil, err
	}
	return &streamOpen{s: s, st: st, recv: func() (proto.Message, error) { return cl.Recv() }}, nil
}

func (s *sim) execSend(raw json.RawMessage, build func(a execArgs) (*driverpb.ExecTaskStreamingRequest, error)) (interface{}, error) {
	var a execArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	st, err := s.stream(a.Stream)
	if err != nil {
		return nil, err
	}
	if st.exec == nil {
		return nil, localErrorf("stream %d is not an exec stream", a.Stream)
	}
	req, err := build(a)
	if err != nil {
		return nil, err
	}
	st.sendMu.Lock()
	defer st.sendMu.Unlock()
	if req == nil {
		if err := st.exec.CloseSend(); err != nil {
			return nil, err
		}
		return map[string]interface{}{}, nil
	}
	if err := st.exec.Send(req); err != nil {
		return nil, err
	}
	return map[string]interface{}{}, nil
}

func opExecStdin(s *sim, raw json.RawMessage) (interface{}, error) {
	return s.execSend(raw, func(a execArgs) (*driverpb.ExecTaskStreamingRequest, error) {
		var data []byte
		if a.Data != nil {
			data = []byte(*a.Data)
		} else {
			var err error
			if data, err = base64.StdEncoding.DecodeString(a.DataB64); err != nil {
				return nil, localErrorf("bad data_b64: %v", err)
			}
		}
		return &driverpb.ExecTaskStreamingRequest{Stdin: &driverpb.ExecTaskStreamingIOOperation{Data: data}}, nil
	})
}

func opExecStdinClose(s *sim, raw json.RawMessage) (interface{}, error) {
	return s.execSend(raw, func(execArgs) (*driverpb.ExecTaskStreamingRequest, error) {
		return &driverpb.ExecTaskStreamingRequest{Stdin: &driverpb.ExecTaskStreamingIOOperation{Close: true}}, nil
	})
}

func opExecResize(s *sim, raw json.RawMessage) (interface{}, error) {
	return s.execSend(raw, func(a execArgs) (*driverpb.ExecTaskStreamingRequest, error) {
		return &driverpb.ExecTaskStreamingRequest{TtySize: &driverpb.ExecTaskStreamingRequest_TerminalSize{
			Height: a.Height, Width: a.Width,
		}}, nil
	})
}

// opExecHeartbeat sends an empty message, like the API's 10 s heartbeat.
func opExecHeartbeat(s *sim, raw json.RawMessage) (interface{}, error) {
	return s.execSend(raw, func(execArgs) (*driverpb.ExecTaskStreamingRequest, error) {
		return &driverpb.ExecTaskStreamingRequest{}, nil
	})
}

func opExecCloseSend(s *sim, raw json.RawMessage) (interface{}, error) {
	return s.execSend(raw, func(execArgs) (*driverpb.ExecTaskStreamingRequest, error) { return nil, nil })
}

func opExecCancel(s *sim, raw json.RawMessage) (interface{}, error) {
	return opCloseStream(s, raw)
}

// ---- tasks -----------------------------------------------------------------

type taskState struct {
	mu      sync.Mutex
	id      string
	handle  *driverpb.TaskHandle
	logmon  []*fifoReader
	paths   *allocPaths
	started time.Time
	network *driverpb.NetworkOverride // the DriverNetwork StartTask returned
}

func (t *taskState) stopLogmon() {
	t.mu.Lock()
	readers := t.logmon
	t.logmon = nil
	t.mu.Unlock()
	for _, r := range readers {
		r.Stop()
	}
}

type simpleResources struct {
	CPUShares   int64           `json:"cpu_shares"`
	MemoryMB    int64           `json:"memory_mb"`
	MemoryMaxMB int64           `json:"memory_max_mb"`
	CpusetCpus  string          `json:"cpuset_cpus"`
	CpusetCgrp  string          `json:"cpuset_cgroup"`
	Ports       json.RawMessage `json:"ports"`
}

type startTaskArgs struct {
	Plugin         string                       `json:"plugin"`
	Task           json.RawMessage              `json:"task"`
	JobFile        string                       `json:"job_file"`
	JobHCL         string                       `json:"job_hcl"`
	TaskName       string                       `json:"task_name"`
	Driver         string                       `json:"driver"`
	Vars           map[string]json.RawMessage   `json:"vars"`
	MsgpackB64     *string                      `json:"msgpack_b64"`
	CreateAllocDir bool                         `json:"create_alloc_dir"`
	NoDefaultEnv   bool                         `json:"no_default_env"`
	NomadVars      map[string]map[string]string `json:"nomad_vars"`
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randomUUID() string {
	h := randomHex(16)
	return h[0:8] + "-" + h[8:12] + "-4" + h[13:16] + "-a" + h[17:20] + "-" + h[20:32]
}

// buildTaskConfig turns the test's task JSON into a TaskConfig, filling in
// what Nomad's task runner would (ids, names, resources, NOMAD_* env).
func buildTaskConfig(a startTaskArgs, jobName, groupName string, host compute) (*driverpb.TaskConfig, error) {
	fields := map[string]json.RawMessage{}
	if len(a.Task) > 0 && string(a.Task) != "null" {
		if err := json.Unmarshal(a.Task, &fields); err != nil {
			return nil, localErrorf("task must be an object: %v", err)
		}
	}
	var simple *simpleResources
	if r, ok := fields["resources"]; ok {
		var probe map[string]json.RawMessage
		if err := json.Unmarshal(r, &probe); err != nil {
			return nil, localErrorf("bad resources: %v", err)
		}
		_, a1 := probe["allocated_resources"]
		_, a2 := probe["linux_resources"]
		if !a1 && !a2 {
			simple = &simpleResources{}
			if err := json.Unmarshal(r, simple); err != nil {
				return nil, localErrorf("bad resources: %v", err)
			}
			delete(fields, "resources")
		}
	}
	rest, _ := json.Marshal(fields)
	cfg := &driverpb.TaskConfig{}
	if err := pbFromJSON(rest, cfg); err != nil {
		return nil, err
	}
	if simple != nil {
		res := &driverpb.Resources{
			AllocatedResources: &driverpb.AllocatedTaskResources{
				Cpu:    &driverpb.AllocatedCpuResources{CpuShares: simple.CPUShares},
				Memory: &driverpb.AllocatedMemoryResources{MemoryMb: simple.MemoryMB, MemoryMaxMb: simple.MemoryMaxMB},
			},
			LinuxResources: &driverpb.LinuxResources{
				CpuShares:        simple.CPUShares,
				MemoryLimitBytes: maxInt64(simple.MemoryMB, simple.MemoryMaxMB) * 1024 * 1024,
				CpusetCpus:       simple.CpusetCpus,
				CpusetCgroup:     simple.CpusetCgrp,
				// task_runner.go: cpu_shares / the node's usable compute
				PercentTicks: float64(simple.CPUShares) / float64(maxUint64(host.usable, 1)),
			},
		}
		if len(simple.Ports) > 0 && string(simple.Ports) != "null" {
			wrapped, _ := json.Marshal(map[string]json.RawMessage{"ports": simple.Ports})
			tmp := &driverpb.Resources{}
			if err := pbFromJSON(wrapped, tmp); err != nil {
				return nil, err
			}
			res.Ports = tmp.Ports
		}
		cfg.Resources = res
	}
	if cfg.AllocId == "" {
		cfg.AllocId = randomUUID()
	}
	if cfg.Name == "" {
		cfg.Name = a.TaskName
	}
	if cfg.Name == "" {
		cfg.Name = "task"
	}
	if cfg.Id == "" {
		cfg.Id = cfg.AllocId + "/" + cfg.Name + "/" + randomHex(4)
	}
	if cfg.JobName == "" {
		cfg.JobName = pick(jobName, "job")
	}
	if cfg.JobId == "" {
		cfg.JobId = cfg.JobName
	}
	if cfg.TaskGroupName == "" {
		cfg.TaskGroupName = pick(groupName, "group")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "default"
	}
	if cfg.NodeName == "" {
		cfg.NodeName, _ = os.Hostname()
	}
	if cfg.Env == nil {
		cfg.Env = map[string]string{}
	}
	if !a.NoDefaultEnv {
		defaults := map[string]string{
			"NOMAD_ALLOC_ID":       cfg.AllocId,
			"NOMAD_SHORT_ALLOC_ID": cfg.AllocId[:minInt(8, len(cfg.AllocId))],
			"NOMAD_ALLOC_NAME":     cfg.JobName + "." + cfg.TaskGroupName + "[0]",
			"NOMAD_ALLOC_INDEX":    "0",
			"NOMAD_TASK_NAME":      cfg.Name,
			"NOMAD_GROUP_NAME":     cfg.TaskGroupName,
			"NOMAD_JOB_NAME":       cfg.JobName,
			"NOMAD_JOB_ID":         cfg.JobId,
			"NOMAD_NAMESPACE":      cfg.Namespace,
		}
		for k, v := range portEnv(cfg.GetResources().GetPorts()) {
			defaults[k] = v
		}
		if r := cfg.GetResources().GetAllocatedResources(); r != nil {
			defaults["NOMAD_CPU_LIMIT"] = strconv.FormatInt(r.GetCpu().GetCpuShares(), 10)
			defaults["NOMAD_MEMORY_LIMIT"] = strconv.FormatInt(r.GetMemory().GetMemoryMb(), 10)
		}
		for k, v := range defaults {
			if _, ok := cfg.Env[k]; !ok {
				cfg.Env[k] = v
			}
		}
	}
	return cfg, nil
}

// jobTaskFor finds the task a start_task with a job file refers to (by
// task_name, task.name, or else the first task using the driver), so the
// TaskConfig and NOMAD_* env match the job; nil without a job.
func jobTaskFor(a startTaskArgs) (*jobTask, error) {
	if a.JobFile == "" && a.JobHCL == "" {
		return nil, nil
	}
	name := a.TaskName
	if name == "" {
		var probe struct {
			Name string `json:"name"`
		}
		_ = json.Unmarshal(a.Task, &probe)
		name = probe.Name
	}
	src := []byte(a.JobHCL)
	if a.JobFile != "" {
		var err error
		if src, err = os.ReadFile(a.JobFile); err != nil {
			return nil, localErrorf("reading job file: %v", err)
		}
	}
	overrides, err := jsonVars(a.Vars)
	if err != nil {
		return nil, err
	}
	job, err := parseJob(src, pick(a.JobFile, "job.nomad.hcl"), overrides)
	if err != nil {
		return nil, err
	}
	driver := pick(a.Driver, "tart")
	for i, t := range job.tasks {
		if (name != "" && t.Name == name) || (name == "" && t.Driver == driver) {
			return &job.tasks[i], nil
		}
	}
	return nil, nil
}

func maxInt64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

func maxUint64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func (s *sim) task(id string) *taskState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tasks[id]
}

func opStartTask(s *sim, raw json.RawMessage) (interface{}, error) {
	var a startTaskArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	jt, err := jobTaskFor(a)
	if err != nil {
		return nil, err
	}
	var jobName, groupName string
	if jt != nil {
		jobName, groupName = jt.Job, jt.Group
		if a.TaskName == "" {
			a.TaskName = jt.Name
		}
	}
	cfg, err := buildTaskConfig(a, jobName, groupName, computeOf(s.topologyFor(a.Plugin)))
	if err != nil {
		return nil, err
	}

	ts := &taskState{id: cfg.Id, started: time.Now()}
	if a.CreateAllocDir {
		if cfg.AllocDir == "" {
			dir, err := os.MkdirTemp("", "nomadsim-alloc-")
			if err != nil {
				return nil, localErrorf("creating alloc dir: %v", err)
			}
			cfg.AllocDir = dir
		}
		paths, err := createAllocDir(cfg.AllocDir, cfg.Name)
		if err != nil {
			return nil, localErrorf("creating alloc dir layout: %v", err)
		}
		ts.paths = &paths
		for _, pair := range [][2]string{{paths.StdoutFifo, paths.StdoutLog}, {paths.StderrFifo, paths.StderrLog}} {
			r, err := startFifoReader(pair[0], pair[1])
			if err != nil {
				ts.stopLogmon()
				return nil, localErrorf("starting log reader: %v", err)
			}
			ts.logmon = append(ts.logmon, r)
		}
		cfg.StdoutPath = paths.StdoutFifo
		cfg.StderrPath = paths.StderrFifo
	}
	if err := runTaskHooks(ctx, p, a, jt, cfg, ts.paths); err != nil {
		ts.stopLogmon()
		return nil, err
	}

	var driverConfigJSON interface{}
	switch {
	case a.JobFile != "" || a.JobHCL != "":
		encs, err := encodeJobTasks(ctx, p, encodeJobArgs{
			JobFile: a.JobFile, JobHCL: a.JobHCL, TaskName: pick(a.TaskName, cfg.Name),
			Driver: a.Driver, Env: cfg.Env, Vars: a.Vars,
		})
		if err != nil {
			ts.stopLogmon()
			return nil, err
		}
		enc := encs[pick(a.TaskName, cfg.Name)]
		cfg.MsgpackDriverConfig = enc.Msgpack
		if j, err := enc.toJSON(); err == nil {
			driverConfigJSON = j["json"]
		}
	case a.MsgpackB64 != nil:
		b, err := base64.StdEncoding.DecodeString(*a.MsgpackB64)
		if err != nil {
			ts.stopLogmon()
			return nil, localErrorf("bad msgpack_b64: %v", err)
		}
		cfg.MsgpackDriverConfig = b
	}

	taskRunnerEvent(cfg, "Received", "Task received by client")
	taskRunnerEvent(cfg, "Task Setup", "Building Task Directory")
	start := time.Now()
	resp, err := p.driver.StartTask(ctx, &driverpb.StartTaskRequest{Task: cfg})
	if err != nil {
		taskRunnerEvent(cfg, "Driver Failure", err.Error())
		ts.stopLogmon()
		return nil, err
	}
	taskRunnerEvent(cfg, "Started", "Task started by client")
	ts.handle = resp.GetHandle()
	ts.network = resp.GetNetworkOverride()
	s.mu.Lock()
	if old, ok := s.tasks[cfg.Id]; ok && old != ts {
		go old.stopLogmon()
	}
	s.tasks[cfg.Id] = ts
	s.mu.Unlock()

	out := map[string]interface{}{
		"task_id":          cfg.Id,
		"handle":           pbJSON(resp.GetHandle()),
		"network_override": pbJSON(resp.GetNetworkOverride()),
		"result":           resp.GetResult().String(),
		"driver_error_msg": resp.GetDriverErrorMsg(),
		"task_config":      pbJSON(cfg),
		"driver_config":    driverConfigJSON,
		"seconds":          time.Since(start).Seconds(),
		"alloc_dir":        cfg.AllocDir,
	}
	if ts.paths != nil {
		out["stdout_log"] = ts.paths.StdoutLog
		out["stderr_log"] = ts.paths.StderrLog
		out["stdout_path"] = ts.paths.StdoutFifo
		out["stderr_path"] = ts.paths.StderrFifo
	}
	return out, nil
}

// runTaskHooks completes the task environment and directory the way Nomad's
// prestart hooks do before StartTask (see taskhooks.go): directory variables
// for the driver's filesystem isolation, the env block, artifacts, templates.
func runTaskHooks(ctx context.Context, p *pluginInst, a startTaskArgs, jt *jobTask,
	cfg *driverpb.TaskConfig, paths *allocPaths) error {
	if !a.NoDefaultEnv {
		caps, err := p.driver.Capabilities(ctx, &driverpb.CapabilitiesRequest{})
		if err != nil {
			return err
		}
		taskDirEnv(cfg.Env, caps.GetCapabilities().GetFsIsolation(), cfg.AllocDir, cfg.Name)
	}
	if jt == nil {
		return nil
	}
	hookEnv(cfg.Env, jt.Hooks)
	if paths == nil {
		if len(jt.Hooks.Artifacts)+len(jt.Hooks.Templates) > 0 {
			return localErrorf("artifact and template blocks need create_alloc_dir")
		}
		return nil
	}
	if err := runArtifacts(paths.TaskDir, jt.Hooks, cfg.Env); err != nil {
		return localErrorf("%v", err)
	}
	fromTemplates, err := runTemplates(paths.TaskDir, jt.Hooks, cfg.Env, a.NomadVars)
	if err != nil {
		return localErrorf("%v", err)
	}
	for k, v := range fromTemplates {
		cfg.Env[k] = v
	}
	return nil
}

type taskArgs struct {
	Plugin         string   `json:"plugin"`
	TaskID         string   `json:"task_id"`
	TimeoutSeconds *float64 `json:"timeout_seconds"`
	Signal         string   `json:"signal"`
	Force          *bool    `json:"force"`
	KeepLogmon     bool     `json:"keep_logmon"`
}

func opWaitTask(s *sim, raw json.RawMessage) (interface{}, error) {
	var a taskArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if a.TimeoutSeconds != nil && *a.TimeoutSeconds > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, seconds(*a.TimeoutSeconds))
		defer cancel()
	}
	start := time.Now()
	resp, err := p.driver.WaitTask(ctx, &driverpb.WaitTaskRequest{TaskId: a.TaskID})
	if err != nil {
		return nil, err
	}
	return map[string]interface{}{
		"result":  pbJSON(resp.GetResult()),
		"err":     resp.GetErr(),
		"seconds": time.Since(start).Seconds(),
	}, nil
}

func opStopTask(s *sim, raw json.RawMessage) (interface{}, error) {
	var a taskArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	timeout := 5.0 // task kill_timeout default
	if a.TimeoutSeconds != nil {
		timeout = *a.TimeoutSeconds
	}
	start := time.Now()
	resp, err := p.driver.StopTask(context.Background(), &driverpb.StopTaskRequest{
		TaskId: a.TaskID, Timeout: ptypes.DurationProto(seconds(timeout)), Signal: a.Signal,
	})
	if err != nil {
		return nil, err
	}
	return map[string]interface{}{"response": pbJSON(resp), "seconds": time.Since(start).Seconds()}, nil
}

func opDestroyTask(s *sim, raw json.RawMessage) (interface{}, error) {
	var a taskArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	force := true // Nomad always destroys with force=true
	if a.Force != nil {
		force = *a.Force
	}
	start := time.Now()
	resp, err := p.driver.DestroyTask(context.Background(), &driverpb.DestroyTaskRequest{TaskId: a.TaskID, Force: force})
	if err != nil {
		return nil, err
	}
	if !a.KeepLogmon {
		s.mu.Lock()
		t := s.tasks[a.TaskID]
		delete(s.tasks, a.TaskID)
		s.mu.Unlock()
		if t != nil {
			t.stopLogmon()
		}
	}
	return map[string]interface{}{"response": pbJSON(resp), "seconds": time.Since(start).Seconds()}, nil
}

func opInspectTask(s *sim, raw json.RawMessage) (interface{}, error) {
	var a taskArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	resp, err := p.driver.InspectTask(context.Background(), &driverpb.InspectTaskRequest{TaskId: a.TaskID})
	if err != nil {
		return nil, err
	}
	return pbJSON(resp), nil
}

func opSignalTask(s *sim, raw json.RawMessage) (interface{}, error) {
	var a taskArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	resp, err := p.driver.SignalTask(context.Background(), &driverpb.SignalTaskRequest{TaskId: a.TaskID, Signal: a.Signal})
	if err != nil {
		return nil, err
	}
	return pbJSON(resp), nil
}

type recoverArgs struct {
	Plugin           string          `json:"plugin"`
	Handle           json.RawMessage `json:"handle"`
	TaskID           string          `json:"task_id"`
	DropDriverConfig bool            `json:"drop_driver_config"`
}

func opRecoverTask(s *sim, raw json.RawMessage) (interface{}, error) {
	var a recoverArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	h := &driverpb.TaskHandle{}
	if err := pbFromJSON(a.Handle, h); err != nil {
		return nil, err
	}
	if a.DropDriverConfig && h.Config != nil {
		h.Config.MsgpackDriverConfig = nil
	}
	// Nomad's client leaves task_id unset; tests may set it explicitly.
	req := &driverpb.RecoverTaskRequest{TaskId: a.TaskID, Handle: h}
	start := time.Now()
	if _, err := p.driver.RecoverTask(context.Background(), req); err != nil {
		return nil, err
	}
	id := h.GetConfig().GetId()
	s.mu.Lock()
	t, ok := s.tasks[id]
	if !ok {
		t = &taskState{id: id, started: time.Now()}
		s.tasks[id] = t
	}
	t.handle = h
	s.mu.Unlock()
	return map[string]interface{}{"task_id": id, "seconds": time.Since(start).Seconds()}, nil
}

type logmonArgs struct {
	TaskID string `json:"task_id"`
	Stream string `json:"stream"`
	State  string `json:"state"`
}

// opLogmon makes a task's log collector stuck ("paused": the FIFO stays
// open, nothing is read), gone ("closed": no reader at all) or working again
// ("running"), for one stream ("stdout", "stderr") or both ("").
func opLogmon(s *sim, raw json.RawMessage) (interface{}, error) {
	var a logmonArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	states := map[string]int32{"running": readerRunning, "paused": readerPaused, "closed": readerClosed}
	state, ok := states[a.State]
	if !ok {
		return nil, localErrorf("state must be running, paused or closed, not %q", a.State)
	}
	t := s.task(a.TaskID)
	if t == nil || t.paths == nil {
		return nil, localErrorf("no task %q with an alloc dir", a.TaskID)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := 0
	for _, r := range t.logmon {
		if a.Stream == "" || r.fifo == map[string]string{
			"stdout": t.paths.StdoutFifo, "stderr": t.paths.StderrFifo}[a.Stream] {
			r.setState(state)
			changed++
		}
	}
	return map[string]interface{}{"readers": changed}, nil
}
