import pkgutil

import ftqueue


def test_all_names_exist_and_nothing_else_is_public():
    public = {n for n in dir(ftqueue) if not n.startswith("_")}
    assert set(ftqueue.__all__) <= public
    modules = {m.name for m in pkgutil.iter_modules(ftqueue.__path__)}
    assert public - set(ftqueue.__all__) <= modules
