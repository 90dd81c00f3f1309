import pkgutil

import ftqueue


def test_all_names_exist_and_nothing_else_is_public():
    public = {n for n in dir(ftqueue) if not n.startswith("_")}
    assert set(ftqueue.__all__) <= public
    modules = {m.name for m in pkgutil.iter_modules(ftqueue.__path__)}
    assert public - set(ftqueue.__all__) <= modules


def test_ray_users_find_state_and_scheduling_strategies_where_ray_keeps_them():
    import ftqueue
    from ftqueue.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from ftqueue.util.state import list_nodes, list_tasks

    assert list_tasks is ftqueue.state.list_tasks and list_nodes is ftqueue.state.list_nodes
    assert ftqueue.util.scheduling_strategies.NodeAffinitySchedulingStrategy is \
        NodeAffinitySchedulingStrategy
    assert NodeAffinitySchedulingStrategy("n1", soft=True).soft
