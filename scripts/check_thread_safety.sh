#!/usr/bin/env bash
# Clang's thread-safety analysis, as an error, over the annotated code: every
# .cc that uses ABSL_GUARDED_BY / ABSL_EXCLUSIVE_LOCKS_REQUIRED / ... or
# StdMutex (common/mutex.h), itself or through its own header (foo.cc for
# foo.h), plus one includer of each annotated header-only file. g++ (the
# build's compiler) ignores the annotations; this gives them teeth.
#
# Runs after scripts/build.sh: it reuses build/compile_commands.json (include
# paths, defines, generated protobuf headers) and only parses (-fsyntax-only),
# so it costs a fraction of a build. Exit 1 with clang's diagnostics for each
# file that breaks a lock contract.
#
#   ./scripts/check_thread_safety.sh            # build/ from scripts/build.sh
#   ./scripts/check_thread_safety.sh other/compile_commands.json
set -euo pipefail
cd "$(dirname "$0")/.."

db="${1:-build/compile_commands.json}"
clang="${CLANG_CXX:-clang++-14}"
if [ ! -f "$db" ]; then
  echo "check_thread_safety: $db not found (run scripts/build.sh first)" >&2
  exit 1
fi
if ! command -v "$clang" >/dev/null 2>&1; then
  echo "check_thread_safety: $clang not found (Debian: clang-14)" >&2
  exit 1
fi

commands="$(mktemp)"
trap 'rm -f "$commands"' EXIT
python3 - "$db" "$clang" "$PWD" >"$commands" <<'EOF'
import json, os, re, shlex, sys

db, clang, root = sys.argv[1:4]
pattern = re.compile(r"ABSL_(?:PT_)?GUARDED_BY|ABSL_(?:EXCLUSIVE|SHARED)_LOCKS_REQUIRED|ABSL_LOCKS_EXCLUDED|"
                     r"ABSL_(?:EXCLUSIVE|SHARED)?_?LOCK_FUNCTION|\bStdMutex")

def annotated(path):
    try:
        with open(path, errors="replace") as f:
            return bool(pattern.search(f.read()))
    except OSError:
        return False

entries = {}
for e in json.load(open(db)):
    path = os.path.realpath(os.path.join(e["directory"], e["file"]))
    if path.endswith(".cc") and path.startswith(root + "/") and "/build/" not in path[len(root):]:
        entries[path] = e

chosen = {p for p in entries if annotated(p) or annotated(p[:-3] + ".h")}
# Header-only annotated files (no foo.cc beside them): check one includer.
for dirpath, _, files in os.walk(root):
    if "/build" in dirpath[len(root):] or "/." in dirpath[len(root):]:
        continue
    for name in files:
        h = os.path.join(dirpath, name)
        if not name.endswith(".h") or not annotated(h) or h[:-2] + ".cc" in entries:
            continue
        include = '#include "%s"' % os.path.relpath(h, root)
        for p in sorted(entries):
            if p not in chosen and include in open(p, errors="replace").read():
                chosen.add(p)
                break

for path in sorted(chosen):
    e = entries[path]
    argv = e["arguments"] if "arguments" in e else shlex.split(e["command"])
    out = [clang]
    skip = False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a == "-o":
            skip = True
        elif a in ("-c", "-w") or a.startswith("-W") or a.startswith("-O") or a == "-g":
            pass  # gcc's warning set and codegen flags do not matter for a parse
        else:
            out.append(a)
    out += ["-fsyntax-only", "-Wno-everything", "-Wthread-safety", "-Werror=thread-safety"]
    # One line per file: "relative/path<TAB>directory<TAB>command".
    print("%s\t%s\t%s" % (os.path.relpath(path, root), e["directory"], shlex.join(out)))
EOF

count="$(wc -l <"$commands")"
echo "check_thread_safety: $count files, $clang -Wthread-safety"
start=$SECONDS
# Every file is checked (exit 1 from one does not stop the others), so one run
# lists every broken lock contract.
if ! tr '\n' '\0' <"$commands" |
  xargs -0 -P "${TANDEM_JOBS:-$(nproc)}" -I{} bash -c '
    IFS=$'"'"'\t'"'"' read -r file dir cmd <<<"$1"
    if ! out="$(cd "$dir" && eval "$cmd" 2>&1)"; then
      printf "check_thread_safety: %s\n%s\n" "$file" "$out" >&2
      exit 1
    fi' _ {}; then
  echo "check_thread_safety: FAILED (see above)" >&2
  exit 1
fi
echo "check_thread_safety: ok ($((SECONDS - start)) s)"
