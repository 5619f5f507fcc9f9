package main

// Where Nomad's client registers a service or check of a task (client/serviceregistration
// address.go, GetAddress, for the modes a driver task can use: auto, host and driver), from
// the allocation's group ports and the DriverNetwork the plugin returned from StartTask.
// Nomad's client keeps that DriverNetwork with the task (it is not asked for again on
// RecoverTask), and so does the sim.

import (
	"encoding/json"
	"net"
	"strconv"

	driverpb "nomadsim/gen/drivers"
)

type serviceAddressArgs struct {
	TaskID      string `json:"task_id"`
	PortLabel   string `json:"port_label"`
	AddressMode string `json:"address_mode"`
}

func findPort(ports []*driverpb.PortMapping, label string) (*driverpb.PortMapping, bool) {
	for _, p := range ports {
		if p.GetLabel() == label {
			return p, true
		}
	}
	return nil, false
}

func serviceAddress(mode, label string, ports []*driverpb.PortMapping, driverNet *driverpb.NetworkOverride) (string, int, error) {
	switch mode {
	case "", "auto":
		if driverNet != nil && driverNet.GetAutoAdvertise() {
			return serviceAddress("driver", label, ports, driverNet)
		}
		return serviceAddress("host", label, ports, driverNet)
	case "host":
		if p, ok := findPort(ports, label); ok {
			return p.GetHostIp(), int(p.GetValue()), nil
		}
		n, err := strconv.Atoi(label)
		if err != nil {
			return "", 0, localErrorf("invalid port %q: port label not found", label)
		}
		return "", n, nil
	case "driver":
		if driverNet == nil || driverNet.GetAddr() == "" {
			return "", 0, localErrorf(`cannot use address_mode="driver": no driver network exists`)
		}
		if p, ok := findPort(ports, label); ok {
			return driverNet.GetAddr(), int(p.GetTo()), nil
		}
		if v, ok := driverNet.GetPortMap()[label]; ok {
			return driverNet.GetAddr(), int(v), nil
		}
		n, err := strconv.Atoi(label)
		if err != nil || n <= 0 {
			return "", 0, localErrorf("invalid port label %q: port labels in driver address_mode must be numeric or in the driver's port map", label)
		}
		return driverNet.GetAddr(), n, nil
	}
	return "", 0, localErrorf("invalid address mode %q", mode)
}

// opServiceAddress: the address and port a service (or check) of the task is registered
// with; checks default to "host" when their address_mode is unset, services to "auto".
func opServiceAddress(s *sim, raw json.RawMessage) (interface{}, error) {
	var a serviceAddressArgs
	if err := parseArgs(raw, &a); err != nil {
		return nil, err
	}
	t := s.task(a.TaskID)
	if t == nil {
		return nil, localErrorf("unknown task %q", a.TaskID)
	}
	t.mu.Lock()
	var ports []*driverpb.PortMapping
	if t.handle != nil {
		ports = t.handle.GetConfig().GetResources().GetPorts()
	}
	driverNet := t.network
	t.mu.Unlock()
	ip, port, err := serviceAddress(a.AddressMode, a.PortLabel, ports, driverNet)
	if err != nil {
		return nil, err
	}
	return map[string]interface{}{"ip": ip, "port": port, "address": net.JoinHostPort(ip, strconv.Itoa(port))}, nil
}

// portEnv: the NOMAD_*_<label> variables of the allocation's ports, as Nomad's task
// environment builder sets them (client/taskenv/env.go, addPorts).
func portEnv(ports []*driverpb.PortMapping) map[string]string {
	env := map[string]string{}
	for _, p := range ports {
		label := p.GetLabel()
		value := strconv.Itoa(int(p.GetValue()))
		addr := net.JoinHostPort(p.GetHostIp(), value)
		inside := value
		if p.GetTo() > 0 {
			inside = strconv.Itoa(int(p.GetTo()))
		}
		env["NOMAD_ADDR_"+label] = addr
		env["NOMAD_HOST_ADDR_"+label] = addr
		env["NOMAD_IP_"+label] = p.GetHostIp()
		env["NOMAD_HOST_IP_"+label] = p.GetHostIp()
		env["NOMAD_PORT_"+label] = inside
		env["NOMAD_ALLOC_PORT_"+label] = inside
		env["NOMAD_HOST_PORT_"+label] = value
	}
	return env
}
