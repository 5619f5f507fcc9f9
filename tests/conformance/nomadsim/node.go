package main

// The node's attributes as Nomad's client builds them from a driver's
// fingerprints, so that tests see what the scheduler sees rather than one
// fingerprint. The rules are those of Nomad's client/node_updater.go
// (applyNodeUpdatesFromDriver) and client/pluginmanager/drivermanager/
// instance.go (handleFingerprint, handleFingerprintError):
//
//   - every attribute becomes a string (the value, then its unit);
//   - the driver's first report is copied into the node whole, "" included;
//   - after that, each attribute is compared with the driver's previous
//     report (not with the node): one that changed to "" is deleted from the
//     node, one that changed to anything else is set, one that is left out
//     keeps whatever the node holds;
//   - the previous report is replaced only by a report that changed
//     something (detection, health, description or an attribute);
//   - a fingerprint stream that fails (the plugin died) or a report with an
//     error counts as a report with no attributes, undetected and unhealthy:
//     the node keeps its attributes, but the next report is compared with
//     that empty one.
//
// One node per plugin name, kept across plugin restarts (launch after a
// crash, reattach), as a client keeps its node while its plugins come and
// go. Not modelled: the "driver.<name>" detection attribute, and the batching
// of the first fingerprints of all plugins when the client starts.

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	driverpb "nomadsim/gen/drivers"
	structspb "nomadsim/gen/structs"
)

// driverInfo is what the client keeps of a driver's latest report.
type driverInfo struct {
	Attributes        map[string]string `json:"attributes"`
	Detected          bool              `json:"detected"`
	Healthy           bool              `json:"healthy"`
	HealthDescription string            `json:"health_description"`
}

// fpWatch is one fingerprint stream feeding a node: the plugin instance it
// came from, and done, closed once its end has been applied.
type fpWatch struct {
	inst *pluginInst
	done chan struct{}
}

type nodeView struct {
	mu         sync.Mutex
	attributes map[string]string
	driver     *driverInfo
	open       map[*fpWatch]struct{}
}

// node returns the node of a plugin name, creating it on first use.
func (s *sim) node(name string) *nodeView {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[name]
	if !ok {
		n = &nodeView{attributes: map[string]string{}, open: map[*fpWatch]struct{}{}}
		s.nodes[name] = n
	}
	return n
}

// attributeString is the attribute as the client stores it on the node.
func attributeString(a *structspb.Attribute) string {
	if a == nil {
		return ""
	}
	var value string
	switch v := a.GetValue().(type) {
	case *structspb.Attribute_FloatVal:
		value = fmt.Sprint(v.FloatVal)
	case *structspb.Attribute_IntVal:
		value = fmt.Sprint(v.IntVal)
	case *structspb.Attribute_BoolVal:
		value = fmt.Sprint(v.BoolVal)
	case *structspb.Attribute_StringVal:
		value = v.StringVal
	}
	return value + a.GetUnit()
}

// report applies one FingerprintResponse.
func (n *nodeView) report(fp *driverpb.FingerprintResponse) {
	if fp.GetErr() != "" {
		n.failed()
		return
	}
	info := &driverInfo{
		Attributes:        make(map[string]string, len(fp.GetAttributes())),
		Detected:          fp.GetHealth() != driverpb.FingerprintResponse_UNDETECTED,
		Healthy:           fp.GetHealth() == driverpb.FingerprintResponse_HEALTHY,
		HealthDescription: fp.GetHealthDescription(),
	}
	for key, attr := range fp.GetAttributes() {
		info.Attributes[key] = attributeString(attr)
	}
	n.apply(info)
}

// failed applies what the client reports when fingerprinting fails.
func (n *nodeView) failed() {
	n.apply(&driverInfo{HealthDescription: "failed to fingerprint driver"})
}

func (n *nodeView) apply(info *driverInfo) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.driver == nil {
		for key, value := range info.Attributes {
			n.attributes[key] = value
		}
		n.driver = info
		return
	}
	changed := n.driver.Detected != info.Detected || n.driver.Healthy != info.Healthy ||
		n.driver.HealthDescription != info.HealthDescription
	for key, value := range info.Attributes {
		if n.driver.Attributes[key] == value {
			continue
		}
		changed = true
		if value == "" {
			delete(n.attributes, key)
		} else {
			n.attributes[key] = value
		}
	}
	if changed {
		n.driver = info
	}
}

// snapshot is the op's result: the node's attributes and the kept report.
func (n *nodeView) snapshot() map[string]interface{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	attributes := make(map[string]string, len(n.attributes))
	for key, value := range n.attributes {
		attributes[key] = value
	}
	var driver interface{}
	if n.driver != nil {
		kept := *n.driver
		kept.Attributes = make(map[string]string, len(n.driver.Attributes))
		for key, value := range n.driver.Attributes {
			kept.Attributes[key] = value
		}
		driver = kept
	}
	return map[string]interface{}{"attributes": attributes, "driver": driver}
}

// watch registers a fingerprint stream of inst.
func (n *nodeView) watch(inst *pluginInst) *fpWatch {
	w := &fpWatch{inst: inst, done: make(chan struct{})}
	n.mu.Lock()
	n.open[w] = struct{}{}
	n.mu.Unlock()
	return w
}

func (n *nodeView) ended(w *fpWatch) {
	n.mu.Lock()
	delete(n.open, w)
	n.mu.Unlock()
	close(w.done)
}

// awaitDead waits (bounded) until the streams of plugin instances other than
// current whose process is gone have ended: the client's one fingerprint loop
// handles a dead plugin's failed stream before it asks the new one.
func (n *nodeView) awaitDead(current *pluginInst, timeout time.Duration) {
	n.mu.Lock()
	var dead []chan struct{}
	for w := range n.open {
		if w.inst != current && w.inst.exited() {
			dead = append(dead, w.done)
		}
	}
	n.mu.Unlock()
	deadline := time.After(timeout)
	for _, done := range dead {
		select {
		case <-done:
		case <-deadline:
			return
		}
	}
}

// nodeRecv wraps a fingerprint stream's Recv so that each report reaches the
// node before the test sees it, and a failed stream (not one the test closed,
// nor one the plugin ended) counts as the client's failed fingerprint.
func (s *sim) nodeRecv(n *nodeView, w *fpWatch, st *streamState, recv func() (*driverpb.FingerprintResponse, error)) func() (*driverpb.FingerprintResponse, error) {
	return func() (*driverpb.FingerprintResponse, error) {
		fp, err := recv()
		if err == nil {
			n.report(fp)
			return fp, nil
		}
		s.mu.Lock()
		cancelled := st.cancelled
		s.mu.Unlock()
		if err != io.EOF && !cancelled {
			n.failed()
		}
		n.ended(w)
		return fp, err
	}
}

type nodeArgs struct {
	Plugin string `json:"plugin"`
}

func opNode(s *sim, raw json.RawMessage) (interface{}, error) {
	var a nodeArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	return s.node(pluginName(a.Plugin)).snapshot(), nil
}
