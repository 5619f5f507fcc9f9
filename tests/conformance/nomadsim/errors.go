package main

import (
	"encoding/json"
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"google.golang.org/grpc/status"

	structspb "nomadsim/gen/structs"
)

// localError is an error produced by nomadsim itself (bad arguments, unknown
// task, ...), as opposed to an error returned by the plugin over gRPC.
type localError struct{ msg string }

func (e *localError) Error() string { return e.msg }

func localErrorf(format string, args ...interface{}) error {
	return &localError{msg: fmt.Sprintf(format, args...)}
}

// diagError carries HCL diagnostics (decode errors), like the "Failed
// Validation" task event Nomad would emit.
type diagError struct {
	context    string
	diags      hcl.Diagnostics
	configJSON []byte // the intermediate JSON the positions refer to, if any
}

func (e *diagError) Error() string {
	if e.context == "" {
		return e.diags.Error()
	}
	return e.context + ": " + e.diags.Error()
}

func diagsToJSON(diags hcl.Diagnostics) []map[string]interface{} {
	out := make([]map[string]interface{}, 0, len(diags))
	for _, d := range diags {
		sev := "error"
		if d.Severity == hcl.DiagWarning {
			sev = "warning"
		}
		item := map[string]interface{}{
			"severity": sev,
			"summary":  d.Summary,
			"detail":   d.Detail,
		}
		if d.Subject != nil {
			item["subject"] = d.Subject.String()
		}
		out = append(out, item)
	}
	return out
}

// describeError turns an error into the reply fields documented in
// docs/nomad-standin.md: error, code, recoverable, kind (+ diagnostics).
func describeError(err error) map[string]interface{} {
	out := map[string]interface{}{
		"error":       err.Error(),
		"code":        nil,
		"recoverable": nil,
	}
	switch e := err.(type) {
	case *localError:
		out["kind"] = "local"
		return out
	case *diagError:
		out["kind"] = "hcl"
		out["diagnostics"] = diagsToJSON(e.diags)
		if e.configJSON != nil {
			out["config_json"] = json.RawMessage(e.configJSON)
		}
		return out
	}
	st, ok := status.FromError(err)
	if !ok {
		out["kind"] = "local"
		return out
	}
	out["kind"] = "rpc"
	out["code"] = st.Code().String()
	out["message"] = st.Message()
	// Like Nomad's driver client: details[0] may be a RecoverableError.
	if details := st.Details(); len(details) > 0 {
		switch d := details[0].(type) {
		case *structspb.RecoverableError:
			out["recoverable"] = d.Recoverable
		case error:
			out["details_error"] = d.Error()
		default:
			out["details_type"] = fmt.Sprintf("%T", d)
		}
	}
	return out
}
