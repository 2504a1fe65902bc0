"""Cluster YAML checks: the shipped files pass; a broken one is refused naming every bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.distributed.cluster import check_cluster_yaml, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,provider", [("cluster.yaml", "aws"), ("cluster.local.yaml", "local")])
def test_shipped_cluster_yamls_pass(name, provider):
    config = check_cluster_yaml(ROOT / name)
    assert config["provider"]["type"] == provider
    assert any("pip install" in c and "-e" in c for c in config["setup_commands"])  # project on every node


def test_broken_cluster_yaml_is_refused_naming_each_key(tmp_path, capsys):
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    del config["provider"]["region"]
    del config["worker_start_ray_commands"]
    config["head_node_type"] = "head.gpu"
    config["available_node_types"]["worker.gpu"]["min_workers"] = 9  # > max_workers 8
    config["file_mounts"] = {"/home/ubuntu/ttt-harness": str(ROOT)}
    config["setup_commands"] = ["pip install numpy"]  # the project itself is never installed
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError) as err:
        check_cluster_yaml(broken)
    message = str(err.value)
    assert "5 problem(s)" in message
    for expected in ("worker_start_ray_commands is missing",
                     "provider.region is missing (required for provider.type 'aws')",
                     "head_node_type 'head.gpu' is not one of available_node_types ['head.cpu', 'worker.gpu']",
                     "available_node_types.worker.gpu: need 0 <= min_workers <= max_workers, got 9 and 8",
                     "setup_commands must pip-install the mounted project (/home/ubuntu/ttt-harness)"):
        assert expected in message
    assert main(["check", str(broken), str(ROOT / "cluster.local.yaml")]) == 1
    out = capsys.readouterr()
    assert "cluster.local.yaml: ok" in out.out and "provider.region is missing" in out.err


def test_cluster_yaml_without_the_project_or_a_mapping(tmp_path):
    (tmp_path / "list.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="must hold a YAML mapping"):
        check_cluster_yaml(tmp_path / "list.yaml")
    config = yaml.safe_load((ROOT / "cluster.local.yaml").read_text())
    config["file_mounts"] = {"/srv/x": "."}  # "." is tmp_path here: no pyproject.toml
    config["available_node_types"] = {"a": {"node_config": {}}}
    config["rsync_exclude"] = ["results"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError) as err:
        check_cluster_yaml(tmp_path / "c.yaml")
    assert "file_mounts must mount the project checkout" in str(err.value)
    assert "available_node_types is not supported for provider.type 'local'" in str(err.value)
    real_mount = {**config, "file_mounts": {"/srv/x": str(ROOT)}}
    real_mount.pop("available_node_types")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(real_mount))
    with pytest.raises(ValueError, match=r"rsync_exclude 'results' also drops harness/results .* anchor it as '/results'"):
        check_cluster_yaml(tmp_path / "d.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_cluster_yaml(tmp_path / "missing.yaml")
