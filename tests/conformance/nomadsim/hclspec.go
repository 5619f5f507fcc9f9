package main

// Conversion of the plugin's hclspec.Spec protobuf (ConfigSchema /
// TaskConfigSchema) into an hcldec.Spec, following the semantics described
// in section 6 of the Nomad driver protocol notes. Written for nomadsim; it
// mirrors the behaviour, not the code, of Nomad's converter.

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"

	hclspecpb "nomadsim/gen/hclspec"
)

// nomadFuncs are the functions Nomad makes available both to Literal specs
// and to task config interpolation.
func nomadFuncs() map[string]function.Function {
	return map[string]function.Function{
		"abs":        stdlib.AbsoluteFunc,
		"coalesce":   stdlib.CoalesceFunc,
		"concat":     stdlib.ConcatFunc,
		"hasindex":   stdlib.HasIndexFunc,
		"int":        stdlib.IntFunc,
		"jsondecode": stdlib.JSONDecodeFunc,
		"jsonencode": stdlib.JSONEncodeFunc,
		"length":     stdlib.LengthFunc,
		"lower":      stdlib.LowerFunc,
		"max":        stdlib.MaxFunc,
		"min":        stdlib.MinFunc,
		"reverse":    stdlib.ReverseFunc,
		"strlen":     stdlib.StrlenFunc,
		"substr":     stdlib.SubstrFunc,
		"upper":      stdlib.UpperFunc,
	}
}

func diag(summary, detail string) hcl.Diagnostics {
	return hcl.Diagnostics{&hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail}}
}

// convertSpec converts the root spec. A nil spec is an error, as in Nomad's
// task runner ("nil spec given").
func convertSpec(spec *hclspecpb.Spec) (hcldec.Spec, hcl.Diagnostics) {
	if spec == nil {
		return nil, diag("nil spec given", "the plugin returned no spec")
	}
	return convertNode(spec, "")
}

// convertNode converts one Spec. implied is the name given by a parent
// Object key; only direct Attr/Block*/ children of an Object receive it.
func convertNode(spec *hclspecpb.Spec, implied string) (hcldec.Spec, hcl.Diagnostics) {
	if spec == nil {
		return nil, diag("Missing spec", "a nested spec is unset")
	}
	switch b := spec.Block.(type) {
	case *hclspecpb.Spec_Object:
		out := hcldec.ObjectSpec{}
		var diags hcl.Diagnostics
		for key, child := range b.Object.GetAttributes() {
			c, d := convertNode(child, key)
			diags = append(diags, d...)
			if c != nil {
				out[key] = c
			}
		}
		return out, diags

	case *hclspecpb.Spec_Array:
		out := hcldec.TupleSpec{}
		var diags hcl.Diagnostics
		for _, child := range b.Array.GetValues() {
			c, d := convertNode(child, "")
			diags = append(diags, d...)
			out = append(out, c)
		}
		return out, diags

	case *hclspecpb.Spec_Attr:
		a := b.Attr
		name := pick(a.GetName(), implied)
		ty, diags := parseTypeString(a.GetType())
		if name == "" {
			diags = append(diags, diag("Missing name in attribute spec",
				"an Attr spec needs a name unless it is a direct child of an Object")...)
		}
		if diags.HasErrors() {
			return nil, diags
		}
		return &hcldec.AttrSpec{Name: name, Type: ty, Required: a.GetRequired()}, diags

	case *hclspecpb.Spec_BlockValue:
		blk := b.BlockValue
		name := pick(blk.GetName(), implied)
		nested, diags := convertNested(blk.GetNested())
		if name == "" {
			diags = append(diags, diag("Missing name in block spec", "a Block spec needs a name")...)
		}
		if diags.HasErrors() {
			return nil, diags
		}
		return &hcldec.BlockSpec{TypeName: name, Nested: nested, Required: blk.GetRequired()}, diags

	case *hclspecpb.Spec_BlockAttrs:
		blk := b.BlockAttrs
		name := pick(blk.GetName(), implied)
		ty, diags := parseTypeString(blk.GetType())
		if name == "" {
			diags = append(diags, diag("Missing name in block_attrs spec", "a BlockAttrs spec needs a name")...)
		}
		if diags.HasErrors() {
			return nil, diags
		}
		return &hcldec.BlockAttrsSpec{TypeName: name, ElementType: ty, Required: blk.GetRequired()}, diags

	case *hclspecpb.Spec_BlockList:
		blk := b.BlockList
		name := pick(blk.GetName(), implied)
		nested, diags := convertNested(blk.GetNested())
		if name == "" {
			diags = append(diags, diag("Missing name in block_list spec", "a BlockList spec needs a name")...)
		}
		if diags.HasErrors() {
			return nil, diags
		}
		return &hcldec.BlockListSpec{TypeName: name, Nested: nested,
			MinItems: int(blk.GetMinItems()), MaxItems: int(blk.GetMaxItems())}, diags

	case *hclspecpb.Spec_BlockSet:
		blk := b.BlockSet
		name := pick(blk.GetName(), implied)
		nested, diags := convertNested(blk.GetNested())
		if name == "" {
			diags = append(diags, diag("Missing name in block_set spec", "a BlockSet spec needs a name")...)
		}
		if diags.HasErrors() {
			return nil, diags
		}
		return &hcldec.BlockSetSpec{TypeName: name, Nested: nested,
			MinItems: int(blk.GetMinItems()), MaxItems: int(blk.GetMaxItems())}, diags

	case *hclspecpb.Spec_BlockMap:
		blk := b.BlockMap
		name := pick(blk.GetName(), implied)
		nested, diags := convertNested(blk.GetNested())
		if name == "" {
			diags = append(diags, diag("Missing name in block_map spec", "a BlockMap spec needs a name")...)
		}
		if len(blk.GetLabels()) == 0 {
			diags = append(diags, diag("Invalid block label name list", "a BlockMap spec needs at least one label")...)
		}
		if diags.HasErrors() {
			return nil, diags
		}
		return &hcldec.BlockMapSpec{TypeName: name, LabelNames: blk.GetLabels(), Nested: nested}, diags

	case *hclspecpb.Spec_Default:
		// Children of Default get no implied name.
		primary, diags := convertNode(b.Default.GetPrimary(), "")
		if diags.HasErrors() {
			return nil, diags
		}
		def, d := convertNode(b.Default.GetDefault(), "")
		diags = append(diags, d...)
		if diags.HasErrors() {
			return nil, diags
		}
		return &hcldec.DefaultSpec{Primary: primary, Default: def}, diags

	case *hclspecpb.Spec_Literal:
		expr, diags := hclsyntax.ParseExpression([]byte(b.Literal.GetValue()), "literal", hcl.Pos{Line: 1, Column: 1})
		if diags.HasErrors() {
			return nil, diags
		}
		val, d := expr.Value(&hcl.EvalContext{Functions: nomadFuncs()})
		diags = append(diags, d...)
		if diags.HasErrors() {
			return nil, diags
		}
		return &hcldec.LiteralSpec{Value: val}, diags

	default:
		return nil, diag("Invalid spec block", fmt.Sprintf("unexpected spec variant %T", spec.Block))
	}
}

func convertNested(spec *hclspecpb.Spec) (hcldec.Spec, hcl.Diagnostics) {
	if spec == nil {
		return nil, diag("Missing spec block", "a block spec needs a nested spec describing its contents")
	}
	return convertNode(spec, "")
}

func pick(explicit, implied string) string {
	if explicit != "" {
		return explicit
	}
	return implied
}

// parseTypeString parses a type expression such as "list(map(string))".
// An empty string is a parse error, as it is for Nomad.
func parseTypeString(src string) (cty.Type, hcl.Diagnostics) {
	expr, diags := hclsyntax.ParseExpression([]byte(src), "type", hcl.Pos{Line: 1, Column: 1})
	if diags.HasErrors() {
		return cty.DynamicPseudoType, diags
	}
	return typeFromExpr(expr)
}

func typeErr(expr hcl.Expression, detail string) hcl.Diagnostics {
	r := expr.Range()
	return hcl.Diagnostics{&hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "Invalid type specification",
		Detail:   detail,
		Subject:  &r,
	}}
}

// typeFromExpr implements the type grammar: string, bool, number, any,
// list(T), set(T), map(T), object({k = T, ...}), tuple([T, ...]).
func typeFromExpr(expr hcl.Expression) (cty.Type, hcl.Diagnostics) {
	switch kw := hcl.ExprAsKeyword(expr); kw {
	case "string":
		return cty.String, nil
	case "bool":
		return cty.Bool, nil
	case "number":
		return cty.Number, nil
	case "any":
		return cty.DynamicPseudoType, nil
	case "list", "set", "map", "object", "tuple":
		return cty.DynamicPseudoType, typeErr(expr, fmt.Sprintf("The %s type constructor requires one argument specifying the element type(s).", kw))
	case "":
	default:
		return cty.DynamicPseudoType, typeErr(expr, fmt.Sprintf("The keyword %q is not a valid type specification.", kw))
	}

	call, diags := hcl.ExprCall(expr)
	if diags.HasErrors() {
		return cty.DynamicPseudoType, typeErr(expr,
			"A type specification is either a primitive type keyword (bool, number, string, any) or a complex type constructor call, like list(string).")
	}
	if len(call.Arguments) != 1 {
		return cty.DynamicPseudoType, typeErr(expr, fmt.Sprintf("The %s type constructor requires exactly one argument.", call.Name))
	}
	arg := call.Arguments[0]
	switch call.Name {
	case "list", "set", "map":
		elem, diags := typeFromExpr(arg)
		if diags.HasErrors() {
			return cty.DynamicPseudoType, diags
		}
		switch call.Name {
		case "list":
			return cty.List(elem), nil
		case "set":
			return cty.Set(elem), nil
		default:
			return cty.Map(elem), nil
		}
	case "object":
		pairs, diags := hcl.ExprMap(arg)
		if diags.HasErrors() {
			return cty.DynamicPseudoType, typeErr(arg, "The object type constructor requires an object of attribute types.")
		}
		attrs := map[string]cty.Type{}
		for _, kv := range pairs {
			key := hcl.ExprAsKeyword(kv.Key)
			if key == "" {
				return cty.DynamicPseudoType, typeErr(kv.Key, "Object attribute names must be identifiers.")
			}
			t, diags := typeFromExpr(kv.Value)
			if diags.HasErrors() {
				return cty.DynamicPseudoType, diags
			}
			attrs[key] = t
		}
		return cty.Object(attrs), nil
	case "tuple":
		elems, diags := hcl.ExprList(arg)
		if diags.HasErrors() {
			return cty.DynamicPseudoType, typeErr(arg, "The tuple type constructor requires a list of element types.")
		}
		var types []cty.Type
		for _, e := range elems {
			t, diags := typeFromExpr(e)
			if diags.HasErrors() {
				return cty.DynamicPseudoType, diags
			}
			types = append(types, t)
		}
		return cty.Tuple(types), nil
	default:
		return cty.DynamicPseudoType, typeErr(expr, fmt.Sprintf("Keyword %q is not a valid type constructor.", call.Name))
	}
}
