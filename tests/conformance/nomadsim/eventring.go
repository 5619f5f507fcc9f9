package main

import (
	"encoding/json"
	"sync"
	"time"

	driverpb "nomadsim/gen/drivers"
)

// Nomad's task runner keeps only the last events of a task: appendTaskEvent drops the
// oldest once defaultMaxEvents are held (client/allocrunner/taskrunner/task_runner.go).
// The alloc runner turns each driver TaskEvent into a "Driver" event carrying the
// driver's message (alloc_runner.go GetTaskEventHandler). `nomad alloc status` shows
// these, so a driver that emits too many pushes the rest out.
const defaultMaxEvents = 10

type ringEvent struct {
	Type    string            `json:"type"`
	Message string            `json:"message"`
	Time    string            `json:"time"`
	Details map[string]string `json:"details,omitempty"`
}

type eventRings struct {
	mu    sync.Mutex
	rings map[string][]ringEvent
}

var taskRings = &eventRings{rings: map[string][]ringEvent{}}

func ringKey(allocID, taskName string) string { return allocID + "/" + taskName }

func (r *eventRings) add(allocID, taskName string, ev ringEvent) {
	if ev.Time == "" {
		ev.Time = time.Now().UTC().Format(time.RFC3339Nano)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	key := ringKey(allocID, taskName)
	events := append(r.rings[key], ev)
	if len(events) > defaultMaxEvents {
		events = append([]ringEvent(nil), events[len(events)-defaultMaxEvents:]...)
	}
	r.rings[key] = events
}

func (r *eventRings) get(allocID, taskName string) []ringEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ringEvent{}, r.rings[ringKey(allocID, taskName)]...)
}

// taskRunnerEvent records what Nomad's own task runner emits around StartTask.
func taskRunnerEvent(cfg *driverpb.TaskConfig, kind, message string) {
	taskRings.add(cfg.GetAllocId(), cfg.GetName(), ringEvent{Type: kind, Message: message})
}

// driverEvent records a TaskEvents message as the alloc runner would.
func driverEvent(ev *driverpb.DriverTaskEvent) {
	when := ""
	if ts := ev.GetTimestamp(); ts != nil {
		when = time.Unix(ts.GetSeconds(), int64(ts.GetNanos())).UTC().Format(time.RFC3339Nano)
	}
	taskRings.add(ev.GetAllocId(), ev.GetTaskName(), ringEvent{
		Type: "Driver", Message: ev.GetMessage(), Time: when, Details: ev.GetAnnotations(),
	})
}

type taskStateArgs struct {
	AllocID  string `json:"alloc_id"`
	TaskName string `json:"task_name"`
}

// opTaskState: the events `nomad alloc status` would show for one task.
func opTaskState(s *sim, raw json.RawMessage) (interface{}, error) {
	var a taskStateArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	return map[string]interface{}{"events": taskRings.get(a.AllocID, a.TaskName)}, nil
}
