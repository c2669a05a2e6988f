package config

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// The file is decoded one key at a time, so that a value of the wrong type
// or form (a bad duration) in one key does not hide the mistakes in the
// others, and every unknown key is reported, not only the first. A syntax
// error stops everything: the decoder cannot read past it.

var decodeErrRE = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// decode fills c from src. It returns false when src is not TOML at all.
func decode(c *Config, src string, p *problems) bool {
	var top map[string]toml.Primitive
	md, err := toml.Decode(src, &top)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			p.add(&Error{File: p.file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message})
		} else {
			p.add(decodeError(p.file, err, "", 0))
		}
		return false
	}
	d := decoder{md: md, src: src, p: p}
	root := reflect.ValueOf(c).Elem()
	for _, k := range sortedKeys(top) {
		f, ok := fieldByTag(root, k)
		if !ok {
			d.unknown(k, lineOfKey(src, toml.Key{k}))
			continue
		}
		switch {
		case f.Kind() == reflect.Struct:
			var m map[string]toml.Primitive
			if d.shape(top[k], &struct{}{}, k, "is not a table; write ["+k+"] on a line of its own, then its keys") && d.shape(top[k], &m, k, "") {
				d.table(m, f, k, -1, k)
			}
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct:
			var arr []map[string]toml.Primitive
			if d.shape(top[k], &[]struct{}{}, k, "is not an array of tables; write [["+k+"]] (two brackets) above each one") && d.shape(top[k], &arr, k, "") {
				f.Set(reflect.MakeSlice(f.Type(), len(arr), len(arr)))
				for i, m := range arr {
					d.table(m, f.Index(i), k, i, fmt.Sprintf("%s[%d]", k, i+1))
				}
			}
		default:
			d.value(top[k], f, k, lineOfKey(src, toml.Key{k}))
		}
	}
	if srv, ok := top["server"]; ok {
		var m map[string]toml.Primitive
		if md.PrimitiveDecode(srv, &m) == nil {
			_, c.explicitNetworks = m["allowed_networks"]
		}
	}
	return true
}

type decoder struct {
	md  toml.MetaData
	src string
	p   *problems
}

// table decodes the keys of one table into the struct v. table and index
// find lines ([table], or its index-th [[table]] when index >= 0); key
// names the table in errors.
func (d *decoder) table(m map[string]toml.Primitive, v reflect.Value, table string, index int, key string) {
	for _, k := range sortedKeys(m) {
		line := 0
		if index >= 0 {
			line = lineOf(d.src, table, index, k)
		}
		if line == 0 {
			line = lineOfKey(d.src, toml.Key{table, k})
		}
		f, ok := fieldByTag(v, k)
		if !ok {
			// Unknown keys of [[arrays]] keep the name the decoder gives
			// them ("destination.tls_mode"); the line tells which one.
			d.unknown(table+"."+k, line)
			continue
		}
		if st, ok := structOf(f); ok {
			// A sub-table such as [destination.oauth]: its keys are
			// checked one by one too, so a misspelt one is reported.
			var sub map[string]toml.Primitive
			if d.shape(m[k], &sub, key+"."+k, "is not a table; write ["+table+"."+k+"] on a line of its own, then its keys") {
				d.subTable(sub, st(), table, index, k, key+"."+k)
			}
			continue
		}
		d.value(m[k], f, key+"."+k, line)
	}
}

// subTable decodes the keys of the sub-table [table.name] of the index-th
// [[table]] (of [table] when index < 0) into v.
func (d *decoder) subTable(m map[string]toml.Primitive, v reflect.Value, table string, index int, name, key string) {
	for _, k := range sortedKeys(m) {
		line := lineOfSub(d.src, table, index, name, k)
		f, ok := fieldByTag(v, k)
		if !ok {
			d.unknown(table+"."+name+"."+k, line)
			continue
		}
		d.value(m[k], f, key+"."+k, line)
	}
}

// structOf reports whether f is a sub-table: a struct or a pointer to one
// that is not a value decoded from text (a Duration). It returns a
// function giving the struct to decode into (allocating the pointer's).
func structOf(f reflect.Value) (func() reflect.Value, bool) {
	if _, ok := f.Addr().Interface().(encoding.TextUnmarshaler); ok {
		return nil, false
	}
	if f.Kind() == reflect.Pointer {
		if _, ok := reflect.New(f.Type().Elem()).Interface().(encoding.TextUnmarshaler); ok {
			return nil, false
		}
	}
	switch {
	case f.Kind() == reflect.Struct:
		return func() reflect.Value { return f }, true
	case f.Kind() == reflect.Pointer && f.Type().Elem().Kind() == reflect.Struct:
		return func() reflect.Value {
			if f.IsNil() {
				f.Set(reflect.New(f.Type().Elem()))
			}
			return f.Elem()
		}, true
	}
	return nil, false
}

// value decodes one key into the field f.
func (d *decoder) value(prim toml.Primitive, f reflect.Value, key string, line int) {
	if err := d.md.PrimitiveDecode(prim, f.Addr().Interface()); err != nil {
		d.p.undecodable(decodeError(d.p.file, err, key, line))
	}
}

// shape decodes prim into v to check that it is a table (or an array of
// tables) as key requires; msg, when set, says so instead of the decoder.
func (d *decoder) shape(prim toml.Primitive, v any, key, msg string) bool {
	if err := d.md.PrimitiveDecode(prim, v); err != nil {
		e := decodeError(d.p.file, err, key, lineOfKey(d.src, toml.Key{key}))
		if msg != "" {
			e = newError(e.File, e.Line, key, msg)
		}
		d.p.undecodable(e)
		return false
	}
	return true
}

func (d *decoder) unknown(key string, line int) {
	d.p.add(&Error{File: d.p.file, Line: line, Key: key,
		Msg: "unknown key; check its spelling against config.example.toml"})
}

// decodeError turns a decoder error into an Error naming key, with the
// decoder's line when it gives one (line otherwise) and without its
// "toml: line N (last key …)" preamble.
func decodeError(file string, err error, key string, line int) *Error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		if pe.Position.Line > 0 {
			line = pe.Position.Line
		}
		return newError(file, line, key, pe.Message)
	}
	msg := err.Error()
	if m := decodeErrRE.FindStringSubmatch(msg); m != nil {
		if n, _ := strconv.Atoi(m[1]); n > 0 {
			line = n
		}
		msg = m[3]
	}
	return newError(file, line, key, strings.TrimPrefix(msg, "toml: "))
}

// fieldByTag returns the field of struct v whose toml tag is name.
func fieldByTag(v reflect.Value, name string) (reflect.Value, bool) {
	t := v.Type()
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		if tag == name && tag != "-" && t.Field(i).IsExported() {
			return v.Field(i), true
		}
	}
	return reflect.Value{}, false
}

func sortedKeys(m map[string]toml.Primitive) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
