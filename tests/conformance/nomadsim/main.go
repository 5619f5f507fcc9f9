// Command nomadsim plays the part of a Nomad client against a task-driver
// plugin. It uses the real go-plugin client, grpc-go, hcl v2 and go-cty
// libraries (Debian packages) and is driven by JSON lines on stdin; see
// docs/nomad-standin.md in the repository for the protocol.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	basepb "nomadsim/gen/base"
)

// request is one command line read from stdin.
type request struct {
	ID int64  `json:"id"`
	Op string `json:"op"`
}

// handler runs one op. It gets the raw JSON line so it can decode its own
// arguments, and returns a JSON-encodable result or an error.
type handler func(s *sim, raw json.RawMessage) (interface{}, error)

type sim struct {
	outMu sync.Mutex
	out   *bufio.Writer

	mu        sync.Mutex
	plugins   map[string]*pluginInst
	graveyard []*pluginInst
	tasks     map[string]*taskState
	streams   map[int64]*streamState
	nextSID   int64
	// the Topology each plugin got with SetConfig (see topology.go)
	topologies map[string]*basepb.ClientTopology
	// the node's attributes from each plugin name's fingerprints (see node.go)
	nodes map[string]*nodeView

	// launchMu serialises launches: an env override is applied to the
	// process environment while go-plugin builds the child's environment.
	launchMu sync.Mutex
}

func newSim() *sim {
	return &sim{
		out:     bufio.NewWriterSize(os.Stdout, 1<<16),
		plugins: map[string]*pluginInst{},
		tasks:   map[string]*taskState{},
		streams: map[int64]*streamState{},

		topologies: map[string]*basepb.ClientTopology{},
		nodes:      map[string]*nodeView{},
	}
}

// emit writes one JSON line to stdout; safe for concurrent use.
func (s *sim) emit(v interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]interface{}{
			"internal_error": fmt.Sprintf("cannot encode output: %v", err),
		})
	}
	s.outMu.Lock()
	defer s.outMu.Unlock()
	_, _ = s.out.Write(b)
	_ = s.out.WriteByte('\n')
	_ = s.out.Flush()
}

func (s *sim) reply(id int64, result interface{}, err error) {
	if err != nil {
		msg := map[string]interface{}{"id": id, "ok": false}
		for k, v := range describeError(err) {
			msg[k] = v
		}
		s.emit(msg)
		return
	}
	if result == nil {
		result = map[string]interface{}{}
	}
	s.emit(map[string]interface{}{"id": id, "ok": true, "result": result})
}

var handlers map[string]handler

func init() {
	handlers = map[string]handler{
		// process management
		"launch":   opLaunch,
		"reattach": opReattach,
		"kill":     opKill,
		"sigkill":  opSigkill,
		"forget":   opForget,
		"plugins":  opPlugins,
		// base plugin
		"plugin_info":   opPluginInfo,
		"config_schema": opConfigSchema,
		"set_config":    opSetConfig,
		// driver
		"init":               opInit,
		"task_config_schema": opTaskConfigSchema,
		"capabilities":       opCapabilities,
		"shutdown_driver":    opShutdownDriver,
		"fingerprint":        opFingerprint,
		"node":               opNode,
		"task_events":        opTaskEvents,
		"close_stream":       opCloseStream,
		"start_task":         opStartTask,
		"task_state":         opTaskState,
		"service_address":    opServiceAddress,
		"wait_task":          opWaitTask,
		"stop_task":          opStopTask,
		"destroy_task":       opDestroyTask,
		"inspect_task":       opInspectTask,
		"signal_task":        opSignalTask,
		"recover_task":       opRecoverTask,
		"task_stats":         opTaskStats,
		"exec_task":          opExecTask,
		"exec_streaming":     opExecStreaming,
		"exec_stdin":         opExecStdin,
		"exec_stdin_close":   opExecStdinClose,
		"exec_resize":        opExecResize,
		"exec_heartbeat":     opExecHeartbeat,
		"exec_close_send":    opExecCloseSend,
		"exec_cancel":        opExecCancel,
		"create_network":     opCreateNetwork,
		"destroy_network":    opDestroyNetwork,
		"logmon":             opLogmon,
		// helpers
		"encode_job":  opEncodeJob,
		"decode_spec": opDecodeSpec,
		"ping":        func(*sim, json.RawMessage) (interface{}, error) { return map[string]interface{}{"pong": true}, nil },
	}
}

func main() {
	s := newSim()
	in := bufio.NewReaderSize(os.Stdin, 1<<20)
	var wg sync.WaitGroup
	for {
		line, err := in.ReadBytes('\n')
		if len(line) > 0 {
			s.dispatch(line, &wg)
		}
		if err != nil {
			if err != io.EOF {
				fmt.Fprintf(os.Stderr, "nomadsim: reading stdin: %v\n", err)
			}
			break
		}
	}
	// stdin closed: whoever drove us is gone. Give in-flight ops a moment
	// to answer (handy when piping commands by hand), then clean up.
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(2 * time.Second):
	}
	s.shutdown()
	os.Exit(0)
}

func (s *sim) dispatch(line []byte, wg *sync.WaitGroup) {
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		s.emit(map[string]interface{}{"id": nil, "ok": false, "error": fmt.Sprintf("bad request line: %v", err)})
		return
	}
	if req.Op == "quit" {
		// Finish the quit synchronously so nothing else is read.
		s.shutdown()
		s.reply(req.ID, map[string]interface{}{}, nil)
		os.Exit(0)
	}
	h, ok := handlers[req.Op]
	if !ok {
		s.reply(req.ID, nil, localErrorf("unknown op %q", req.Op))
		return
	}
	raw := json.RawMessage(append([]byte(nil), line...))
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() {
			if r := recover(); r != nil {
				s.reply(req.ID, nil, localErrorf("panic in op %s: %v", req.Op, r))
			}
		}()
		res, err := h(s, raw)
		s.reply(req.ID, res, err)
		if ar, ok := res.(interface{ afterReply() }); ok && err == nil {
			ar.afterReply()
		}
	}()
}

// shutdown kills every plugin and stops every log reader.
func (s *sim) shutdown() {
	s.mu.Lock()
	var insts []*pluginInst
	for _, p := range s.plugins {
		insts = append(insts, p)
	}
	insts = append(insts, s.graveyard...)
	s.plugins = map[string]*pluginInst{}
	s.graveyard = nil
	var streams []*streamState
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	var tasks []*taskState
	for _, t := range s.tasks {
		tasks = append(tasks, t)
	}
	s.mu.Unlock()

	for _, st := range streams {
		st.cancel()
	}
	var wg sync.WaitGroup
	for _, p := range insts {
		wg.Add(1)
		go func(p *pluginInst) {
			defer wg.Done()
			p.killWithTimeout(defaultKillTimeout)
		}(p)
	}
	wg.Wait()
	for _, t := range tasks {
		t.stopLogmon()
	}
}

// parseArgs decodes the request line into v (unknown keys are ignored).
func parseArgs(raw json.RawMessage, v interface{}) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return localErrorf("bad arguments: %v", err)
	}
	return nil
}
