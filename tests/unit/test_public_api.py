import ftqueue


def test_all_names_exist_and_nothing_else_is_public():
    public = {n for n in dir(ftqueue) if not n.startswith("_")}
    assert set(ftqueue.__all__) <= public
    modules = {"api", "cli", "client", "context", "embedded", "exceptions", "keys", "payload",
               "remote_function", "serialization", "settings", "spec", "store", "supervisor",
               "worker", "state", "output", "metrics", "signing"}
    assert public - set(ftqueue.__all__) <= modules
