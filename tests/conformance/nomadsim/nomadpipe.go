package main

// Nomad's two-step config pipeline, reproduced:
//
//  1. At job submit time jobspec2 turns a task's `config {}` body into a
//     map: every block becomes an attribute whose value is a list of
//     objects (labels become nested single-item lists), an attribute whose
//     expression is an object constructor `{...}` is wrapped in a one-item
//     list, and expressions are evaluated with var.*/local.* only; any other
//     variable reference is kept as the template text "${<reference>}" (the
//     UnknownVariable hook of Nomad's hcl fork). The agent's
//     `plugin "x" { config {} }` goes through HCL1, which produces the same
//     shapes and leaves interpolations as text.
//  2. On the client the map is JSON-encoded, parsed with hcl's JSON syntax
//     (strings are templates), decoded with the plugin's spec and an
//     EvalContext holding the task environment, and marshalled with go-cty
//     msgpack.

import (
	"encoding/json"
	"fmt"
	"math/big"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	hcljson "github.com/hashicorp/hcl/v2/json"
	"github.com/zclconf/go-cty/cty"
)

// submitConfig is step 1: the config body as the Go value the client gets.
func submitConfig(body hcl.Body, src []byte, ctx *hcl.EvalContext) (map[string]interface{}, hcl.Diagnostics) {
	sb, ok := body.(*hclsyntax.Body)
	if !ok {
		return nil, diag("Unsupported body", fmt.Sprintf("cannot convert %T", body))
	}
	return bodyToGo(sb, src, ctx)
}

func bodyToGo(body *hclsyntax.Body, src []byte, ctx *hcl.EvalContext) (map[string]interface{}, hcl.Diagnostics) {
	out := map[string]interface{}{}
	var diags hcl.Diagnostics
	for name, attr := range body.Attributes {
		val, d := evalKeepingUnknown(attr.Expr, src, ctx)
		diags = append(diags, d...)
		if d.HasErrors() {
			continue
		}
		goVal, err := ctyToGo(val)
		if err != nil {
			r := attr.Expr.Range()
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "unsuitable value type",
				Detail: fmt.Sprintf("Unsuitable value: %v", err), Subject: &r})
			continue
		}
		if _, isObject := attr.Expr.(*hclsyntax.ObjectConsExpr); isObject {
			goVal = []interface{}{goVal}
		}
		out[name] = goVal
	}
	byType := map[string][]interface{}{}
	var order []string
	for _, blk := range body.Blocks {
		obj, d := bodyToGo(blk.Body, src, ctx)
		diags = append(diags, d...)
		var item interface{} = obj
		for i := len(blk.Labels) - 1; i >= 0; i-- {
			item = map[string]interface{}{blk.Labels[i]: []interface{}{item}}
		}
		if _, seen := byType[blk.Type]; !seen {
			order = append(order, blk.Type)
		}
		byType[blk.Type] = append(byType[blk.Type], item)
	}
	for _, t := range order {
		out[t] = byType[t]
	}
	return out, diags
}

// evalKeepingUnknown evaluates expr; references to variables the context
// does not define evaluate to "${<source text>}".
func evalKeepingUnknown(expr hclsyntax.Expression, src []byte, ctx *hcl.EvalContext) (cty.Value, hcl.Diagnostics) {
	known := map[string]cty.Value{}
	var funcs = nomadFuncs()
	if ctx != nil {
		for k, v := range ctx.Variables {
			known[k] = v
		}
		if ctx.Functions != nil {
			funcs = ctx.Functions
		}
	}
	tree := map[string]interface{}{}
	for _, trav := range expr.Variables() {
		root := trav.RootName()
		if _, ok := known[root]; ok {
			continue
		}
		r := trav.SourceRange()
		text := root
		if r.Start.Byte >= 0 && r.End.Byte <= len(src) && r.Start.Byte < r.End.Byte {
			text = string(src[r.Start.Byte:r.End.Byte])
		}
		path := []string{root}
		for _, step := range trav[1:] {
			switch s := step.(type) {
			case hcl.TraverseAttr:
				path = append(path, s.Name)
			case hcl.TraverseIndex:
				if s.Key.Type() == cty.String && s.Key.IsKnown() && !s.Key.IsNull() {
					path = append(path, s.Key.AsString())
				} else {
					path = append(path, s.Key.GoString())
				}
			}
		}
		insertPlaceholder(tree, path, "${"+text+"}")
	}
	vars := map[string]cty.Value{}
	for k, v := range known {
		vars[k] = v
	}
	for k, v := range tree {
		if c, ok := treeToCty(v); ok {
			vars[k] = c
		}
	}
	return expr.Value(&hcl.EvalContext{Variables: vars, Functions: funcs})
}

func insertPlaceholder(tree map[string]interface{}, path []string, leaf string) {
	for i, p := range path {
		if i == len(path)-1 {
			if _, exists := tree[p]; !exists {
				tree[p] = leaf
			}
			return
		}
		next, ok := tree[p].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{} // a deeper reference wins over a bare one
			tree[p] = next
		}
		tree = next
	}
}

// ctyToGo mirrors how jobspec2 turns evaluated values into Go values.
func ctyToGo(v cty.Value) (interface{}, error) {
	if v.IsNull() {
		return nil, nil
	}
	if !v.IsKnown() {
		return nil, fmt.Errorf("value is not known")
	}
	t := v.Type()
	switch {
	case t == cty.String:
		return v.AsString(), nil
	case t == cty.Bool:
		return v.True(), nil
	case t == cty.Number:
		bf := v.AsBigFloat()
		if bf.IsInf() {
			f, _ := bf.Float64()
			return f, nil
		}
		if i, acc := bf.Int64(); acc == big.Exact {
			return i, nil
		}
		f, _ := bf.Float64()
		return f, nil
	case t.IsListType(), t.IsSetType(), t.IsTupleType():
		out := []interface{}{}
		for it := v.ElementIterator(); it.Next(); {
			_, ev := it.Element()
			g, err := ctyToGo(ev)
			if err != nil {
				return nil, err
			}
			out = append(out, g)
		}
		return out, nil
	case t.IsMapType(), t.IsObjectType():
		out := map[string]interface{}{}
		for it := v.ElementIterator(); it.Next(); {
			k, ev := it.Element()
			g, err := ctyToGo(ev)
			if err != nil {
				return nil, err
			}
			out[k.AsString()] = g
		}
		return out, nil
	default:
		return nil, fmt.Errorf("cannot serialize %s", t.FriendlyName())
	}
}

// clientDecode is step 2: JSON, hcl JSON syntax, hcldec, msgpack.
func clientDecode(config map[string]interface{}, spec hcldec.Spec, ctx *hcl.EvalContext, what string) (encoded, []byte, error) {
	js, err := json.Marshal(config)
	if err != nil {
		return encoded{}, nil, localErrorf("%s: encoding config as JSON: %v", what, err)
	}
	f, diags := hcljson.Parse(js, "")
	if diags.HasErrors() {
		return encoded{}, js, &diagError{context: what, diags: diags, configJSON: js}
	}
	val, diags := hcldec.Decode(f.Body, spec, ctx)
	if diags.HasErrors() {
		for _, d := range diags {
			if d.Summary == "Extraneous JSON object property" {
				d.Summary = "Invalid label" // as Nomad's client reports it
			}
		}
		return encoded{}, js, &diagError{context: what, diags: diags, configJSON: js}
	}
	enc, err := marshalValue(val, what)
	return enc, js, err
}

// nomadPipeline runs both steps on a native-syntax config body.
func nomadPipeline(body hcl.Body, src []byte, submitCtx *hcl.EvalContext, spec hcldec.Spec,
	clientCtx *hcl.EvalContext, what string) (encoded, []byte, error) {
	config, diags := submitConfig(body, src, submitCtx)
	if diags.HasErrors() {
		return encoded{}, nil, &diagError{context: what + " (job submission)", diags: diags}
	}
	return clientDecode(config, spec, clientCtx, what)
}
