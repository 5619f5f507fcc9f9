// A minimal go-plugin server: the baseline for the plugin's start-up time.
//
// It speaks Nomad's handshake (protocol 2, Nomad's magic cookie) over gRPC. Its one
// plugin registers no service, so the server offers only what go-plugin always serves:
// the gRPC health service, the broker and the controller. (A plugin is needed at all
// because go-plugin 1.0.1 picks gRPC over net/rpc from the type of the first plugin.)
// Built offline from Debian's go-plugin 1.0.1 by bench/gobuild.py, exactly like
// tests/conformance/build.py builds nomadsim.
package main

import (
	"context"

	plugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
)

type nothing struct {
	plugin.NetRPCUnsupportedPlugin
}

func (nothing) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error { return nil }

func (nothing) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (interface{}, error) {
	return nil, nil
}

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: plugin.HandshakeConfig{
			ProtocolVersion:  2,
			MagicCookieKey:   "NOMAD_PLUGIN_MAGIC_COOKIE",
			MagicCookieValue: "e4327c2e01eabfd75a8a67adb114fb34a757d57eee7728d857a8cec6e91a7255",
		},
		Plugins:    plugin.PluginSet{"base": nothing{}, "driver": nothing{}},
		GRPCServer: plugin.DefaultGRPCServer,
	})
}
