"""gRPC's polling setting for Cairn's processes (cluster/rpc/polling.py)."""
import os
import subprocess
import sys

from cluster.rpc import polling


def test_configure_sets_the_default_when_the_environment_names_none():
    environ = {}
    assert polling.configure(environ) == polling.GRPC_EXPERIMENTS
    assert environ["GRPC_EXPERIMENTS"] == polling.GRPC_EXPERIMENTS


def test_configure_keeps_a_setting_the_environment_already_has_even_an_empty_one():
    for own in ("", "event_engine_client"):
        environ = {"GRPC_EXPERIMENTS": own}
        assert polling.configure(environ) == own
        assert environ == {"GRPC_EXPERIMENTS": own}


def test_importing_cluster_configures_grpc_before_grpc_is_imported():
    probe = ("import sys, os, cluster; "
             "print('grpc' in sys.modules, os.environ['GRPC_EXPERIMENTS'])")
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=environ, check=True)
    assert out.stdout.split() == ["False", polling.GRPC_EXPERIMENTS]
