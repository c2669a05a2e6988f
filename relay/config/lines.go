package config

import (
	"strings"

	"github.com/BurntSushi/toml"
)

// The TOML decoder reports lines only for syntax errors. For errors found
// after decoding (a bad min_tls, an unknown key) these helpers find the
// line by looking for the key inside its table, which is exact for the
// usual one-key-per-line style and harmless (no line shown) otherwise.

// lineOf returns the 1-based line of key inside [table], or inside the
// index-th [[table]] when index >= 0; 0 when not found.
func lineOf(src, table string, index int, key string) int {
	inTable := false
	seen := -1
	for i, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			name, array := tableHeader(t)
			inTable = false
			if name == table && array {
				seen++
				inTable = seen == index
			} else if name == table && index < 0 {
				inTable = true
			}
			continue
		}
		if inTable && keyOfLine(t) == key {
			return i + 1
		}
	}
	return 0
}

// lineOfSub returns the 1-based line of key inside the sub-table
// [table.name] of the index-th [[table]] (of [table] when index < 0); 0
// when not found.
func lineOfSub(src, table string, index int, name, key string) int {
	seen, inParent, inSub := -1, index < 0, false
	for i, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			h, array := tableHeader(t)
			if h == table && array {
				seen++
				inParent = seen == index
			}
			inSub = inParent && !array && h == table+"."+name
			continue
		}
		if inSub && keyOfLine(t) == key {
			return i + 1
		}
	}
	return 0
}

// lineOfKey returns the line of the first occurrence of a dotted key as
// the decoder reports it (array tables appear without their index).
func lineOfKey(src string, k toml.Key) int {
	if len(k) == 0 {
		return 0
	}
	table := strings.Join(k[:len(k)-1], ".")
	key := k[len(k)-1]
	current := ""
	for i, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			current, _ = tableHeader(t)
			if current == strings.Join(k, ".") {
				return i + 1 // the unknown key is itself a table
			}
			continue
		}
		if current == table && keyOfLine(t) == key {
			return i + 1
		}
	}
	return 0
}

func tableHeader(t string) (name string, array bool) {
	if strings.HasPrefix(t, "[[") {
		end := strings.Index(t, "]]")
		if end < 0 {
			return "", true
		}
		return strings.TrimSpace(t[2:end]), true
	}
	end := strings.Index(t, "]")
	if end < 0 {
		return "", false
	}
	return strings.TrimSpace(t[1:end]), false
}

func keyOfLine(t string) string {
	eq := strings.Index(t, "=")
	if eq <= 0 || strings.HasPrefix(t, "#") {
		return ""
	}
	return strings.Trim(strings.TrimSpace(t[:eq]), `"'`)
}
