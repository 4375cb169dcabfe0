"""The code's layout, as README's "How the code is laid out" describes it.

These hold the promises a reader relies on when looking for where a step
happens: one C file per concept, each small enough to read, each with a
header of its own; every version check in compat.h; setup.py building
exactly those files; and a Python package whose modules import each other
in one direction only.
"""
import ast
import pathlib
import re
import shutil
import subprocess
import sysconfig

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "_xthread"
PACKAGE = ROOT / "xthread"
MAX_LINES = 1200

if not SRC.is_dir():  # pragma: no cover - run from an installed copy
    pytest.skip("the sources are not beside the tests", allow_module_level=True)

PARTS = sorted(p.stem for p in SRC.glob("*.c"))
HEADERS = sorted(p.stem for p in SRC.glob("*.h"))


def setup_list(name):
    """A list that setup.py assigns (PARTS, HEADERS), read without running
    setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if (isinstance(node, ast.Assign)
                and [t.id for t in node.targets] == [name]):
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no %s list" % name)


def test_setup_builds_every_part_and_nothing_else():
    assert sorted(setup_list("PARTS")) == PARTS
    assert len(PARTS) >= 8, PARTS


def test_setup_names_every_header():
    # setup.py's sources and depends are what the sdist carries: a header
    # missing there builds here and fails from the sdist.
    named = set(setup_list("PARTS")) | set(setup_list("HEADERS"))
    assert set(HEADERS) <= named, set(HEADERS) - named


@pytest.mark.parametrize("name", PARTS + HEADERS)
def test_no_c_file_is_over_the_limit(name):
    for path in SRC.glob(name + ".[ch]"):
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, "%s has %d lines" % (path.name, lines)


@pytest.mark.parametrize("part", [p for p in PARTS if p != "module"])
def test_every_part_has_a_header_that_says_what_it_offers(part):
    header = SRC / (part + ".h")
    assert header.exists(), "%s.c has no %s.h" % (part, part)
    text = header.read_text()
    assert text.startswith("/* %s.h: " % part), text[:80]
    guard = "XTHREAD_%s_H" % part.upper()
    assert "#ifndef %s\n#define %s\n" % (guard, guard) in text
    # The part includes its own header, so the two cannot drift apart.
    assert '#include "%s.h"' % part in (SRC / (part + ".c")).read_text()


VERSION_CHECK = re.compile(
    r"PY_VERSION_HEX|Py_LIMITED_API|Py_GIL_DISABLED|Py_mod_multiple_interpreters"
    r"|Py_mod_gil|#\s*if.*PY_(MAJOR|MINOR)_VERSION")


@pytest.mark.parametrize("name", [p + ".c" for p in PARTS]
                         + [h + ".h" for h in HEADERS if h != "compat"])
def test_version_differences_live_in_compat_h_only(name):
    # Comments may name a version's API; code may not test for it.
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", (SRC / name).read_text(),
                  flags=re.S)
    found = [line for line in text.splitlines() if VERSION_CHECK.search(line)]
    assert found == [], "%s checks the version itself: %s" % (name, found)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("header", HEADERS)
def test_each_header_compiles_on_its_own(header, tmp_path):
    # A header includes what it needs: a part may include it first.
    source = tmp_path / "only.c"
    source.write_text('#include "%s.h"\n' % header)
    result = subprocess.run(
        ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
         "-I", str(SRC), "-I", sysconfig.get_paths()["include"],
         str(source)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def package_imports():
    """{module: modules of the package it imports}, counting imports made
    inside functions too: a cycle there is still a cycle."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module is None:
                    deps.update(alias.name for alias in node.names)
                elif node.level == 1:
                    deps.add(node.module.split(".")[0])
                elif (node.module or "").startswith("xthread."):
                    deps.add(node.module.split(".")[1])
                elif node.module == "xthread":
                    deps.add("__init__")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("xthread."):
                        deps.add(alias.name.split(".")[1])
                    elif alias.name == "xthread":
                        deps.add("__init__")
        graph[path.stem] = deps - {path.stem}
    return graph


def find_cycle(graph):
    """A cycle of `graph` as a list of modules (first == last), or None."""
    done, path = set(), []

    def visit(module):
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            cycle = visit(dep)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = package_imports()
    assert {"_thread", "_stop", "_sync", "_pool", "_landing"} <= set(graph)
    # The imports README names, so that the graph is known to be read.
    assert {"_stop", "_sync", "_thread"} <= graph["_pool"]
    assert "_stop" in graph["_thread"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_is_found_even_through_a_function_level_import(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "_a.py").write_text("from . import _b\n")
    (package / "_b.py").write_text("def f():\n    from ._c import g\n")
    (package / "_c.py").write_text("import xthread._a\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, package
    try:
        graph = package_imports()
    finally:
        PACKAGE = saved
    assert graph == {"_a": {"_b"}, "_b": {"_c"}, "_c": {"_a"}}
    assert find_cycle(graph) == ["_a", "_b", "_c", "_a"]
