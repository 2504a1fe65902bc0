"""Slow, opt-in (`pytest -m slow`): `ray up cluster.local.yaml` over ssh to 127.0.0.1, `ray submit` of the S1
study with sharded evaluation, `ray down`. Skips where Debian's openssh-server (sshd) is absent.

Isolation from anything else on this machine: sshd runs per connection in inetd mode as the ssh
ProxyCommand (no port, no daemon), with a ForceCommand that gives the "remote" shell a private HOME and
turns every `ray stop` (which would stop every Ray on the host) into stopping this test's Ray only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


def _ours(tag: str) -> list[int]:
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if tag.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            pass
    return [p for p in pids if p != os.getpid()]


@pytest.mark.slow
def test_ray_up_submit_down_over_ssh_to_localhost():
    if not os.path.exists(SSHD) or not shutil.which("rsync"):
        pytest.skip("needs openssh-server (sshd) and rsync: apt-get install openssh-server rsync")
    t = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    raytmp, home = t / "ray", t / "home"
    home.mkdir()
    try:
        for key in ("id", "host"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / key)], check=True)
        (t / "authorized_keys").write_text((t / "id.pub").read_text())
        # RAY_TMPDIR: where `ray start` records the cluster (<RAY_TMPDIR>/ray = --temp-dir), so the submitted
        # script finds it as Ray's own resolution does on a cluster launcher's head node
        profile = f"export PATH={VENV_BIN}:$PATH PYTHONPATH={t}/project RAY_AUTH_MODE=disabled RAY_TMPDIR={t}\n"
        (home / ".bash_profile").write_text(profile)
        (home / ".bashrc").write_text(profile)
        (t / "stop.sh").write_text(  # TERM, then KILL what is left: this test's Ray processes only, by pid
            f"#!/bin/bash\nours() {{ grep -la {raytmp} /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 | grep -vx $$; }}\n"
            "for p in $(ours); do kill $p 2>/dev/null; done; sleep 3\n"
            "for p in $(ours); do kill -9 $p 2>/dev/null; done; exit 0\n")
        (t / "wrap.sh").write_text(f'#!/bin/bash\nexport HOME={home}\ncmd="${{SSH_ORIGINAL_COMMAND//ray stop/{t}/stop.sh}}"\n'
                                   'exec bash -c "$cmd"\n')
        for f in ("stop.sh", "wrap.sh"):
            (t / f).chmod(0o755)
        (t / "sshd_config").write_text(
            f"HostKey {t}/host\nAuthorizedKeysFile {t}/authorized_keys\nStrictModes no\nPermitRootLogin yes\n"
            f"PasswordAuthentication no\nUsePAM no\nForceCommand {t}/wrap.sh\n")
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]

        config = yaml.safe_load((ROOT / "cluster.local.yaml").read_text())
        config["cluster_name"] = f"ttt-ssh-test-{t.name}"
        config["auth"] = {"ssh_user": os.environ.get("USER", "root"), "ssh_private_key": str(t / "id"),
                          "ssh_proxy_command": f"{SSHD} -i -f {t}/sshd_config"}
        config["file_mounts"] = {f"{t}/project": str(ROOT)}
        config["setup_commands"] = [f"test -f {t}/project/pyproject.toml"]  # importable via PYTHONPATH (no pip into a shared venv)
        config["head_start_ray_commands"] = [
            "ray stop",  # rewritten to stop.sh by the ForceCommand
            f"ray start --head --port={port} --temp-dir={raytmp} --num-cpus=2 --include-dashboard=false "
            "--autoscaling-config=~/ray_bootstrap_config.yaml"]
        cfg_path = t / "cluster.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
        ray = str(VENV_BIN / "ray")

        up = subprocess.run([ray, "up", str(cfg_path), "-y", "--no-config-cache"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert _ours(str(raytmp)), "ray up started no Ray processes under the test's temp dir"
        submit = subprocess.run(
            [ray, "submit", str(cfg_path), str(ROOT / "studies" / "model_scaling.py"), "--", "--sizes", "280",
             "--epochs", "1", "--fraction", "0.1", "--test-points", "60", "--actors", "1",
             "--out-dir", str(t / "out")],  # no --address: the script joins the cluster it runs on
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        assert "error (percent, 90% bootstrap CI)" in submit.stdout
        logs = submit.stdout + submit.stderr
        assert "Connecting to existing Ray cluster" in logs and "Started a local Ray instance" not in logs
        assert (t / "out" / "points.parquet").exists() and (t / "out" / "figure.png").exists()
        down = subprocess.run([ray, "down", str(cfg_path), "-y"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]
        deadline = time.time() + 20
        while _ours(str(raytmp)) and time.time() < deadline:
            time.sleep(0.5)
        left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in _ours(str(raytmp))}
        assert not left, f"ray down left this test's Ray processes running: {left}"
    finally:
        for pid in _ours(str(raytmp)):  # only this test's Ray, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(t, ignore_errors=True)
