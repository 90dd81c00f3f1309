"""Each script carries only the lib.lua helpers it needs (scripts.shake), and never fewer."""

import re
from importlib import resources

from ftqueue.store.scripts import load_scripts, prelude, top_level_chunks

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
COMMENT = re.compile(r"--.*$", re.MULTILINE)


def _library_names() -> set[str]:
    lib = resources.files("ftqueue.store").joinpath("lua/lib.lua").read_text()
    names: set[str] = set()
    for defined, _ in top_level_chunks(prelude(()) + "\n" + lib):
        names |= defined
    return names


def test_every_helper_a_script_names_is_defined_in_it():
    library = _library_names()
    for name, script in load_scripts().items():
        defined: set[str] = set()
        for names, _ in top_level_chunks(script.source):
            defined |= names
        used = set(NAME.findall(COMMENT.sub("", script.source))) & library
        assert used <= defined, (name, sorted(used - defined))


def test_scripts_leave_out_the_helpers_they_do_not_use():
    scripts = load_scripts()
    assert "function finish(" in scripts["commit"].source
    assert "function finish(" not in scripts["clock"].source
    assert "local function create(" not in scripts["commit"].source
    assert "local function create(" in scripts["submit"].source
