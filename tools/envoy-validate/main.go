// Command envoy-validate checks Envoy bootstrap files the way Envoy's own config loading does,
// without an Envoy binary:
//
//  1. YAML is converted to JSON and decoded into envoy.config.bootstrap.v3.Bootstrap with
//     protojson, unknown fields rejected (as `envoy --mode validate` does by default). Every
//     `typed_config` (google.protobuf.Any) must name a type registered in this binary.
//  2. The protoc-gen-validate rules Envoy enforces (required fields, min_len, duration and
//     numeric ranges, defined enum values, oneof requirements, ...) are checked with the
//     generated ValidateAll() of every message, and every Any is unpacked into its concrete
//     type and validated the same way, recursively (ValidateAll stops at an Any).
//
// Usage: envoy-validate FILE.yaml...   (prints "ok: FILE" or "FAIL: FILE" with every violation;
// exit status 1 if any file fails, 2 on usage errors).
//
// Only the extension types blank-imported below are known: a config using another extension
// fails with "unable to resolve" until its package is added here.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// Extensions used by envoy/*.yaml (and a few neighbours they are commonly combined with).
	// Importing a package registers its types for Any resolution.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/header_mutation/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/health_check/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

type validator interface{ ValidateAll() error }

// check returns every problem found in one file (nil = valid).
func check(path string) []string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return []string{err.Error()}
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return []string{"yaml: " + err.Error()}
	}
	var b bootstrap.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, &b); err != nil {
		return []string{"schema: " + err.Error()}
	}
	var problems []string
	validateTree(&b, "bootstrap", &problems)
	return problems
}

// validateTree runs m's own PGV rules (which recurse into ordinary sub-messages), then finds
// every Any below m, unpacks it and validates the payload the same way.
func validateTree(m proto.Message, at string, problems *[]string) {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			for _, e := range flatten(err) {
				*problems = append(*problems, fmt.Sprintf("%s: %s", at, e))
			}
		}
	}
	forEachAny(m.ProtoReflect(), at, func(a *anypb.Any, p string) {
		inner, err := a.UnmarshalNew()
		if err != nil {
			*problems = append(*problems, fmt.Sprintf("%s: cannot unpack %s: %v", p, a.GetTypeUrl(), err))
			return
		}
		validateTree(inner, fmt.Sprintf("%s<%s>", p, inner.ProtoReflect().Descriptor().FullName()), problems)
	})
}

// forEachAny calls fn for every google.protobuf.Any reachable from m without crossing another Any.
func forEachAny(m protoreflect.Message, at string, fn func(*anypb.Any, string)) {
	visit := func(sub protoreflect.Message, p string) {
		if sub.Descriptor().FullName() == "google.protobuf.Any" {
			if a, ok := sub.Interface().(*anypb.Any); ok {
				fn(a, p)
			}
			return
		}
		forEachAny(sub, p, fn)
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := at + "." + string(fd.Name())
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				visit(l.Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				visit(mv.Message(), fmt.Sprintf("%s[%s]", p, k.String()))
				return true
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			visit(v.Message(), p)
		}
		return true
	})
}

// flatten splits PGV's MultiError (ValidateAll reports every violation) into single lines.
func flatten(err error) []string {
	var multi interface{ AllErrors() []error }
	if errors.As(err, &multi) {
		var out []string
		for _, e := range multi.AllErrors() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []string{strings.TrimSpace(err.Error())}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: envoy-validate FILE.yaml...")
		os.Exit(2)
	}
	failed := 0
	for _, path := range os.Args[1:] {
		problems := check(path)
		if len(problems) == 0 {
			fmt.Printf("ok: %s\n", path)
			continue
		}
		failed++
		fmt.Printf("FAIL: %s\n", path)
		for _, p := range problems {
			fmt.Printf("  - %s\n", p)
		}
	}
	if failed > 0 {
		fmt.Printf("%d of %d file(s) failed\n", failed, len(os.Args)-1)
		os.Exit(1)
	}
}
