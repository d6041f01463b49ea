#!/usr/bin/env python3
"""Walks docs/ARCHITECTURE.md by its pointers: every `path` it names must
exist, every `path:Name` must name something that path defines, and every
bare `Class::Member` must be defined somewhere in the tree. So the page
cannot point a newcomer at a file or function that was renamed or removed.

  python3 tests/architecture_doc_test.py REPO_ROOT   # exit 1 and a list on failure
"""
import os
import re
import subprocess
import sys

PATH_RE = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*/?$")
FILE_EXT = (".h", ".cc", ".cu", ".proto", ".py", ".sh", ".cmake", ".md", ".mjs", ".txt", ".json", ".yaml")
IDENT = r"[A-Za-z_~][A-Za-z0-9_]*"
QUALIFIED_RE = re.compile(rf"^{IDENT}(::{IDENT})+$")


def defines(text, name):
    """True when `name` (possibly A::B) is defined or declared in `text`."""
    parts = name.split("::")
    last = parts[-1]
    if not all(re.search(rf"\b{re.escape(p)}\b", text) for p in parts[:-1]):
        return False
    return re.search(rf"\b(class|struct|enum( class)?|using)\s+{re.escape(last)}\b", text) is not None or \
        re.search(rf"\b{re.escape(last)}\s*\(", text) is not None or \
        re.search(rf"#define\s+{re.escape(last)}\b", text) is not None or \
        re.search(rf"^\s*[\w:<>,*& ]+[\w>*&]\s+{re.escape(last)}\s*(=|;|{{)", text, re.M) is not None  # a data member


def defined_in_tree(root, name):
    last = name.split("::")[-1]
    files = subprocess.run(["git", "-C", root, "grep", "-l", "-w", last, "--", "*.h", "*.cc"],
                           capture_output=True, text=True).stdout.split()
    return any(defines(open(os.path.join(root, f), encoding="utf-8").read(), name) for f in files)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    doc = open(os.path.join(root, "docs", "ARCHITECTURE.md"), encoding="utf-8").read()
    problems, checked = [], 0
    for token in re.findall(r"`([^`\n]+)`", doc):
        path, _, name = token.partition(":")
        looks_like_path = PATH_RE.match(path) and ("/" in path) and (path.endswith("/") or path.endswith(FILE_EXT))
        if looks_like_path and (not name or re.match(rf"^{IDENT}(::{IDENT})*$", name)):
            checked += 1
            full = os.path.join(root, path)
            if not os.path.exists(full):
                problems.append(f"`{token}`: no such file or folder")
            elif name and not defines(open(full, encoding="utf-8").read(), name):
                problems.append(f"`{token}`: {path} does not define {name}")
        elif QUALIFIED_RE.match(token) and not token.startswith(("tandem.", "std::", "absl::", "grpc::")):
            checked += 1
            if not defined_in_tree(root, token):
                problems.append(f"`{token}`: defined nowhere in the tree")
    for p in problems:
        print(p)
    print(f"{checked} pointers checked, {len(problems)} broken")
    return 1 if problems or checked < 40 else 0


if __name__ == "__main__":
    sys.exit(main())
