package main

// The host's CPU as a Nomad client describes it to drivers (SetConfig's
// NomadDriverConfig.Topology, Nomad 1.7+), what it derives from it
// (client/lib/numalib/topology.go: TotalCompute, UsableCompute, NumCores),
// and the check of TaskStats against that capacity: Nomad's TotalTicks is the
// CPU in use now, in MHz (client/lib/cpustats/stats.go TicksConsumed:
// percent / 100 * TotalCompute / NumCores), and `nomad alloc status` prints it
// as "<ticks>/<reserved> MHz".

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"

	basepb "nomadsim/gen/base"
	driverpb "nomadsim/gen/drivers"
)

// hostTopology is what a Nomad client on this machine would send: every
// logical CPU, with the speeds its Linux scanner finds (cpufreq base and max
// frequency), else the "cpu MHz" of /proc/cpuinfo as a guess, as Nomad's
// generic scanner does.
func hostTopology() *basepb.ClientTopology {
	guess := cpuinfoMHz()
	n := runtime.NumCPU()
	t := &basepb.ClientTopology{NodeIds: []uint32{0}}
	for i := 0; i < n; i++ {
		core := &basepb.ClientTopologyCore{CoreId: uint32(i), CoreGrade: basepb.CoreGrade_Performance}
		core.BaseSpeed = sysfsMHz(i, "base_frequency")
		core.MaxSpeed = sysfsMHz(i, "cpuinfo_max_freq")
		if core.BaseSpeed == 0 && core.MaxSpeed == 0 {
			core.GuessSpeed = guess
		}
		t.Cores = append(t.Cores, core)
	}
	return t
}

func sysfsMHz(cpu int, name string) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/sys/devices/system/cpu/cpu%d/cpufreq/%s", cpu, name))
	if err != nil {
		return 0
	}
	khz, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0
	}
	return khz / 1000
}

func cpuinfoMHz() uint64 {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 1000
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(key) == "cpu MHz" {
			if mhz, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil && mhz > 0 {
				return uint64(mhz)
			}
		}
	}
	return 1000
}

// compute is the part of a topology TaskStats are checked against.
type compute struct {
	total, usable uint64
	cores         int
	memBytes      uint64
}

func coreMHz(c *basepb.ClientTopologyCore) uint64 {
	switch {
	case c.BaseSpeed > 0:
		return c.BaseSpeed
	case c.MaxSpeed > 0:
		return c.MaxSpeed
	}
	return c.GuessSpeed
}

// computeOf mirrors numalib's TotalCompute, UsableCompute and NumCores.
func computeOf(t *basepb.ClientTopology) compute {
	var total, usable uint64
	for _, c := range t.Cores {
		total += coreMHz(c)
		if !c.Disable {
			usable += coreMHz(c)
		}
	}
	usable -= t.OverrideWitholdCompute
	if t.OverrideTotalCompute > 0 {
		total, usable = t.OverrideTotalCompute, t.OverrideTotalCompute
	}
	return compute{total: total, usable: usable, cores: len(t.Cores), memBytes: memTotal()}
}

func memTotal() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return math.MaxUint64
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			if kb, err := strconv.ParseUint(fields[1], 10, 64); err == nil {
				return kb * 1024
			}
		}
	}
	return math.MaxUint64
}

// topologyFor is the topology set_config sent to a plugin, else this host's.
func (s *sim) topologyFor(plugin string) *basepb.ClientTopology {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.topologies[pick(plugin, "default")]; ok {
		return t
	}
	return hostTopology()
}

func measured(fields []driverpb.CPUUsage_Fields, want driverpb.CPUUsage_Fields) bool {
	for _, f := range fields {
		if f == want {
			return true
		}
	}
	return false
}

// checkUsage holds one TaskResourceUsage to the host's capacity and to the
// meaning Nomad gives its fields.
func checkUsage(what string, u *driverpb.TaskResourceUsage, c compute) error {
	// Nomad takes a missing cpu or memory part as not measured (alloc_status.go).
	cpu, mem := u.GetCpu(), u.GetMemory()
	if cpu == nil {
		cpu = &driverpb.CPUUsage{}
	}
	if mem == nil {
		mem = &driverpb.MemoryUsage{}
	}
	// Percent is summed over processes, each up to 100 per core it keeps busy.
	maxPercent := float64(c.cores) * 100
	if cpu.Percent < 0 || cpu.Percent > maxPercent*1.1+1 {
		return fmt.Errorf("%s: percent %.1f is beyond the host's %d cores (at most %.0f)",
			what, cpu.Percent, c.cores, maxPercent)
	}
	if measured(cpu.MeasuredFields, driverpb.CPUUsage_TOTAL_TICKS) {
		if cpu.TotalTicks < 0 || cpu.TotalTicks > float64(c.total)*1.1+1 {
			return fmt.Errorf("%s: total_ticks %.0f MHz is beyond the host's %d MHz "+
				"(nomad alloc status would show %.0f/... MHz)", what, cpu.TotalTicks, c.total,
				math.Floor(cpu.TotalTicks))
		}
		want := cpu.Percent / 100 * float64(c.total) / float64(c.cores)
		if math.Abs(cpu.TotalTicks-want) > math.Max(1, want*0.01) {
			return fmt.Errorf("%s: total_ticks %.1f MHz is not the CPU in use now: with percent "+
				"%.2f on %d cores of %d MHz in all, Nomad's TicksConsumed is %.1f MHz",
				what, cpu.TotalTicks, cpu.Percent, c.cores, c.total, want)
		}
	}
	if mem.Rss > c.memBytes {
		return fmt.Errorf("%s: rss %d bytes is more than the host's memory (%d bytes)",
			what, mem.Rss, c.memBytes)
	}
	return nil
}

func checkStats(resp *driverpb.TaskStatsResponse, c compute) error {
	stats := resp.GetStats()
	if stats == nil || stats.AggResourceUsage == nil {
		return fmt.Errorf("a TaskStats sample without stats or agg_resource_usage")
	}
	if err := checkUsage("agg_resource_usage", stats.AggResourceUsage, c); err != nil {
		return err
	}
	for pid, u := range stats.ResourceUsageByPid {
		if err := checkUsage("resource_usage_by_pid["+pid+"]", u, c); err != nil {
			return err
		}
	}
	return nil
}
