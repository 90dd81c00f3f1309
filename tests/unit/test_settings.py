"""Settings live in one place: every FTQUEUE_* variable is read by settings.py only, every
one is in the README's table, and the node's flags take their defaults from it."""

from __future__ import annotations

import os
import re

import pytest

from ftqueue.cli import build_parser, resolve_node_resources
from ftqueue.settings import ENV, SECRET_ENV, Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "ftqueue")


def test_only_settings_reads_the_environment():
    readers = re.compile(r"os\.environ\.get\(|os\.getenv\(|env_(str|int|float)\(\s*\"FTQUEUE_")
    offenders = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and not path.endswith(os.path.join("ftqueue", "settings.py")):
                with open(path) as f:
                    for n, line in enumerate(f, 1):
                        if readers.search(line):
                            offenders.append(f"{os.path.relpath(path, ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_variable_is_documented_in_the_readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    missing = [v for v in list(ENV.values()) + list(SECRET_ENV) if f"`{v}`" not in readme]
    assert not missing


def test_node_flags_default_to_the_settings():
    env = Settings.from_env({"FTQUEUE_QUEUES": "high,low", "FTQUEUE_PREFETCH": "3",
                             "FTQUEUE_LEASE_TIMEOUT_S": "7", "FTQUEUE_NUM_WORKERS": "5",
                             "FTQUEUE_MAX_MEMORY_PER_WORKER": "1M"})
    args = build_parser(env).parse_args(["worker"])
    resolve_node_resources(args)
    assert (args.queues, args.prefetch, args.lease_timeout, args.num_workers,
            args.max_memory_per_worker) == (("high", "low"), 3, 7.0, 5, 2 ** 20)
    assert build_parser(Settings()).parse_args(["worker"]).grace_period == \
        Settings().grace_period_s


def test_node_resources_default_as_the_contract_says():
    def resolved(*flags):
        args = build_parser(Settings(num_workers=3)).parse_args(["worker", *flags])
        resolve_node_resources(args)
        return args.num_workers, args.num_cpus, args.num_gpus, args.gpu_ids

    assert resolved() == (3, 3, 0, ())
    assert resolved("--num-cpus", "2.5") == (3, 2.5, 0, ())        # enough workers for it
    assert resolved("--num-workers", "2", "--num-cpus", "8") == (2, 8, 0, ())
    assert resolved("--num-gpus", "2") == (3, 3, 2, ("0", "1"))


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="FTQUEUE_PREFETCH"):
        Settings.from_env({"FTQUEUE_PREFETCH": "many"})


def test_lineage_is_kept_at_least_as_long_as_results():
    env = Settings.from_env({"FTQUEUE_RESULT_TTL_S": "100", "FTQUEUE_LINEAGE_TTL_S": "5"})
    assert env.lineage_ttl_s == 100
