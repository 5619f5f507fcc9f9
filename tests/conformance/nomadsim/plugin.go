package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	basepb "nomadsim/gen/base"
	driverpb "nomadsim/gen/drivers"
)

// Nomad's handshake (plugins/base/plugin.go in Nomad).
var nomadHandshake = plugin.HandshakeConfig{
	ProtocolVersion:  2,
	MagicCookieKey:   "NOMAD_PLUGIN_MAGIC_COOKIE",
	MagicCookieValue: "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
}

const defaultKillTimeout = 20 * time.Second

// basePlugin and driverPlugin are client-only go-plugin GRPCPlugins that
// hand out the generated gRPC stubs, as Nomad's own plugin types do.
type basePlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (basePlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("nomadsim only implements the client side")
}

func (basePlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return basepb.NewBasePluginClient(c), nil
}

type driverPlugin struct{ plugin.NetRPCUnsupportedPlugin }

func (driverPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("nomadsim only implements the client side")
}

func (driverPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (interface{}, error) {
	return driverpb.NewDriverClient(c), nil
}

func pluginSet() map[string]plugin.Plugin {
	return map[string]plugin.Plugin{"base": &basePlugin{}, "driver": &driverPlugin{}}
}

// logTee writes go-plugin's host log (hclog JSON) to the log file and watches
// it for the lines that tell how a kill went.
type logTee struct {
	mu             sync.Mutex
	w              io.Writer
	partial        []byte
	failedGraceful bool
	exitSeen       bool
	exitError      string
}

func (t *logTee) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.w != nil {
		if _, err := t.w.Write(p); err != nil {
			fmt.Fprintf(os.Stderr, "nomadsim: writing plugin log: %v\n", err)
		}
	}
	t.partial = append(t.partial, p...)
	for {
		i := bytes.IndexByte(t.partial, '\n')
		if i < 0 {
			break
		}
		t.inspect(t.partial[:i])
		t.partial = t.partial[i+1:]
	}
	return len(p), nil
}

func (t *logTee) inspect(line []byte) {
	var entry map[string]interface{}
	if json.Unmarshal(line, &entry) != nil {
		return
	}
	msg, _ := entry["@message"].(string)
	switch msg {
	case "plugin failed to exit gracefully":
		t.failedGraceful = true
	case "plugin process exited", "reattached plugin process exited":
		t.exitSeen = true
		if e, ok := entry["error"].(string); ok {
			t.exitError = e
		}
	}
}

func (t *logTee) snapshot() (failed bool, exitSeen bool, exitErr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failedGraceful, t.exitSeen, t.exitError
}

type pluginInst struct {
	name       string
	client     *plugin.Client
	base       basepb.BasePluginClient
	driver     driverpb.DriverClient
	pid        int
	addr       net.Addr
	protocol   plugin.Protocol
	reattached bool
	tee        *logTee
	files      []*os.File

	killMu     sync.Mutex
	killResult map[string]interface{}
}

// exited reports whether the plugin process is gone (or a zombie).
func (p *pluginInst) exited() bool {
	if !p.reattached && p.client.Exited() {
		return true
	}
	return pidGone(p.pid)
}

// pidGone is true when pid does not exist or is a zombie (PID 1 on the CI
// machines does not reap orphans, so a dead orphan stays a zombie).
func pidGone(pid int) bool {
	if pid <= 0 {
		return true
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// state is the first field after the ")" closing the command name
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 >= len(data) {
		return false
	}
	state := data[i+2]
	return state == 'Z' || state == 'X'
}

// killWithTimeout runs go-plugin's Client.Kill (GRPCController.Shutdown,
// wait 2 s, SIGKILL) and reports how it went. Idempotent.
func (p *pluginInst) killWithTimeout(timeout time.Duration) map[string]interface{} {
	p.killMu.Lock()
	defer p.killMu.Unlock()
	if p.killResult != nil {
		return p.killResult
	}
	wasGone := p.exited()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.client.Kill()
	}()
	hung := false
	select {
	case <-done:
	case <-time.After(timeout):
		hung = true
	}
	seconds := time.Since(start).Seconds()
	failed, exitSeen, exitErr := p.tee.snapshot()
	res := map[string]interface{}{
		"graceful":       !failed && !hung,
		"seconds":        seconds,
		"already_exited": wasGone,
		"exited":         p.exited(),
		"hung":           hung,
		"exit_error":     nil,
	}
	if exitSeen && exitErr != "" {
		res["exit_error"] = exitErr
	}
	for _, f := range p.files {
		_ = f.Close()
	}
	p.killResult = res
	return res
}

type launchArgs struct {
	Plugin              string            `json:"plugin"`
	Cmd                 []string          `json:"cmd"`
	Env                 map[string]string `json:"env"`
	UnsetEnv            []string          `json:"unset_env"`
	LogFile             string            `json:"log_file"`
	StartTimeoutSeconds float64           `json:"start_timeout_seconds"`
}

func pluginName(n string) string {
	if n == "" {
		return "default"
	}
	return n
}

func openLog(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
}

func newHostLogger(tee *logTee) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "client.driver_mgr",
		Level:      hclog.Trace,
		JSONFormat: true,
		Output:     tee,
	})
}

// register stores the instance under its name; an existing live instance
// with that name is an error, an exited one is replaced.
func (s *sim) register(p *pluginInst) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.plugins[p.name]; ok {
		if !old.exited() {
			return localErrorf("plugin %q is still running (kill, sigkill or forget it first)", p.name)
		}
		s.graveyard = append(s.graveyard, old)
	}
	s.plugins[p.name] = p
	return nil
}

func (s *sim) reserve(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.plugins[name]; ok && !old.exited() {
		return localErrorf("plugin %q is still running (kill, sigkill or forget it first)", name)
	}
	return nil
}

func (s *sim) plugin(name string) (*pluginInst, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.plugins[pluginName(name)]
	if !ok {
		return nil, localErrorf("no plugin named %q (launch it first)", pluginName(name))
	}
	return p, nil
}

func dispense(p *pluginInst) error {
	rpc, err := p.client.Client()
	if err != nil {
		return err
	}
	raw, err := rpc.Dispense("base")
	if err != nil {
		return err
	}
	p.base = raw.(basepb.BasePluginClient)
	raw, err = rpc.Dispense("driver")
	if err != nil {
		return err
	}
	p.driver = raw.(driverpb.DriverClient)
	return nil
}

func opLaunch(s *sim, raw json.RawMessage) (interface{}, error) {
	var a launchArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	if len(a.Cmd) == 0 {
		return nil, localErrorf("launch needs cmd")
	}
	name := pluginName(a.Plugin)
	if err := s.reserve(name); err != nil {
		return nil, err
	}

	tee := &logTee{}
	inst := &pluginInst{name: name, tee: tee}
	var stderrW io.Writer = io.Discard
	if a.LogFile != "" {
		lf, err := openLog(a.LogFile)
		if err != nil {
			return nil, localErrorf("opening log file: %v", err)
		}
		rf, err := openLog(a.LogFile + ".raw")
		if err != nil {
			lf.Close()
			return nil, localErrorf("opening raw log file: %v", err)
		}
		tee.w = lf
		stderrW = rf
		inst.files = []*os.File{lf, rf}
	}

	cfg := &plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          pluginSet(),
		Cmd:              exec.Command(a.Cmd[0], a.Cmd[1:]...),
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           newHostLogger(tee),
		Stderr:           stderrW,
	}
	if a.StartTimeoutSeconds > 0 {
		cfg.StartTimeout = time.Duration(a.StartTimeoutSeconds * float64(time.Second))
	}
	client := plugin.NewClient(cfg)
	inst.client = client

	// go-plugin appends os.Environ() to cmd.Env, and the last duplicate
	// wins, so overrides must be in the process environment during Start.
	s.launchMu.Lock()
	restore := applyEnv(a.Env, a.UnsetEnv)
	start := time.Now()
	addr, err := client.Start()
	handshake := time.Since(start).Seconds()
	restore()
	s.launchMu.Unlock()
	if err != nil {
		client.Kill()
		for _, f := range inst.files {
			f.Close()
		}
		return nil, localErrorf("launching plugin: %v", err)
	}
	inst.addr = addr
	if rc := client.ReattachConfig(); rc != nil {
		inst.pid = rc.Pid
		inst.protocol = rc.Protocol
	}
	if err := dispense(inst); err != nil {
		client.Kill()
		return nil, localErrorf("dispensing plugin: %v", err)
	}
	if err := s.register(inst); err != nil {
		client.Kill()
		return nil, err
	}
	return map[string]interface{}{
		"plugin":             name,
		"pid":                inst.pid,
		"handshake_seconds":  handshake,
		"network":            addr.Network(),
		"addr":               addr.String(),
		"protocol":           string(inst.protocol),
		"negotiated_version": client.NegotiatedVersion(),
	}, nil
}

// applyEnv sets/unsets process environment variables and returns a function
// restoring the previous values.
func applyEnv(set map[string]string, unset []string) func() {
	type prev struct {
		val string
		ok  bool
	}
	saved := map[string]prev{}
	save := func(k string) {
		if _, done := saved[k]; !done {
			v, ok := os.LookupEnv(k)
			saved[k] = prev{v, ok}
		}
	}
	for _, k := range unset {
		save(k)
		os.Unsetenv(k)
	}
	for k, v := range set {
		save(k)
		os.Setenv(k, v)
	}
	return func() {
		for k, p := range saved {
			if p.ok {
				os.Setenv(k, p.val)
			} else {
				os.Unsetenv(k)
			}
		}
	}
}

type reattachArgs struct {
	Plugin  string `json:"plugin"`
	Addr    string `json:"addr"`
	Pid     int    `json:"pid"`
	Network string `json:"network"`
	LogFile string `json:"log_file"`
}

func opReattach(s *sim, raw json.RawMessage) (interface{}, error) {
	var a reattachArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	name := pluginName(a.Plugin)
	if err := s.reserve(name); err != nil {
		return nil, err
	}
	var addr net.Addr
	var err error
	switch a.Network {
	case "unix", "":
		addr, err = net.ResolveUnixAddr("unix", a.Addr)
	case "tcp":
		addr, err = net.ResolveTCPAddr("tcp", a.Addr)
	default:
		err = fmt.Errorf("unknown network %q", a.Network)
	}
	if err != nil {
		return nil, localErrorf("bad reattach address: %v", err)
	}
	tee := &logTee{}
	inst := &pluginInst{name: name, tee: tee, pid: a.Pid, reattached: true, addr: addr, protocol: plugin.ProtocolGRPC}
	if a.LogFile != "" {
		lf, err := openLog(a.LogFile)
		if err != nil {
			return nil, localErrorf("opening log file: %v", err)
		}
		tee.w = lf
		inst.files = []*os.File{lf}
	}
	inst.client = plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  nomadHandshake,
		Plugins:          pluginSet(),
		Reattach:         &plugin.ReattachConfig{Protocol: plugin.ProtocolGRPC, Addr: addr, Pid: a.Pid},
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           newHostLogger(tee),
	})
	start := time.Now()
	if err := dispense(inst); err != nil {
		for _, f := range inst.files {
			f.Close()
		}
		return nil, localErrorf("reattaching: %v", err)
	}
	if err := s.register(inst); err != nil {
		return nil, err
	}
	return map[string]interface{}{
		"plugin":  name,
		"pid":     a.Pid,
		"seconds": time.Since(start).Seconds(),
		"network": addr.Network(),
		"addr":    addr.String(),
	}, nil
}

type pluginArgs struct {
	Plugin         string  `json:"plugin"`
	TimeoutSeconds float64 `json:"timeout_seconds"`
}

func opKill(s *sim, raw json.RawMessage) (interface{}, error) {
	var a pluginArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	timeout := defaultKillTimeout
	if a.TimeoutSeconds > 0 {
		timeout = time.Duration(a.TimeoutSeconds * float64(time.Second))
	}
	return p.killWithTimeout(timeout), nil
}

func opSigkill(s *sim, raw json.RawMessage) (interface{}, error) {
	var a pluginArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	p, err := s.plugin(a.Plugin)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := syscall.Kill(p.pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
		return nil, localErrorf("kill -9 %d: %v", p.pid, err)
	}
	timeout := 10 * time.Second
	if a.TimeoutSeconds > 0 {
		timeout = time.Duration(a.TimeoutSeconds * float64(time.Second))
	}
	deadline := time.Now().Add(timeout)
	for !p.exited() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return map[string]interface{}{
		"pid":     p.pid,
		"exited":  p.exited(),
		"seconds": time.Since(start).Seconds(),
	}, nil
}

// opForget drops a plugin without killing it (an agent crash): the process
// keeps running and can be reattached. The client is kept so that a
// launched child is still reaped when it exits.
func opForget(s *sim, raw json.RawMessage) (interface{}, error) {
	var a pluginArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	name := pluginName(a.Plugin)
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.plugins[name]
	if !ok {
		return nil, localErrorf("no plugin named %q", name)
	}
	delete(s.plugins, name)
	s.graveyard = append(s.graveyard, p)
	return map[string]interface{}{
		"pid":     p.pid,
		"network": p.addr.Network(),
		"addr":    p.addr.String(),
	}, nil
}

func opPlugins(s *sim, _ json.RawMessage) (interface{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]interface{}{}
	for name, p := range s.plugins {
		out[name] = map[string]interface{}{
			"pid":        p.pid,
			"addr":       p.addr.String(),
			"network":    p.addr.Network(),
			"reattached": p.reattached,
			"exited":     p.exited(),
		}
	}
	return map[string]interface{}{"plugins": out}, nil
}
