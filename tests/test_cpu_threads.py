"""The command line's OpenMP settings: threads = idle cores, bounded spinning, user settings win."""

from __future__ import annotations

import os
import subprocess
import sys

from facemogle import cpu_threads


def test_a_quiet_machine_keeps_every_core(monkeypatch):
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: {0, 1})
    monkeypatch.setattr(cpu_threads, "busy_cores", lambda cores, seconds: 0)
    env = {}
    plan = cpu_threads.configure(env)
    assert env == {"GOMP_SPINCOUNT": str(cpu_threads.SPIN_COUNT), "OMP_NUM_THREADS": "2"}
    assert (plan.threads, plan.available, plan.busy) == (2, 2, 0)


def test_busy_cores_are_left_out_but_one_thread_stays(monkeypatch):
    monkeypatch.setattr(cpu_threads, "available_cores", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(cpu_threads, "busy_cores", lambda cores, seconds: 1)
    env = {}
    assert cpu_threads.configure(env).threads == 3 and env["OMP_NUM_THREADS"] == "3"
    monkeypatch.setattr(cpu_threads, "busy_cores", lambda cores, seconds: 9)
    assert cpu_threads.configure({}).threads == 1


def test_the_users_settings_win(monkeypatch):
    monkeypatch.setattr(cpu_threads, "busy_cores", lambda cores, seconds: 1)
    env = {"OMP_NUM_THREADS": "7", "OMP_WAIT_POLICY": "PASSIVE"}
    plan = cpu_threads.configure(env)
    assert env == {"OMP_NUM_THREADS": "7", "OMP_WAIT_POLICY": "PASSIVE"} and plan.threads is None
    env = {cpu_threads.THREADS_VARIABLE: "3"}
    assert cpu_threads.configure(env).threads == 3 and env["OMP_NUM_THREADS"] == "3"
    env = {cpu_threads.POLICY_VARIABLE: "off"}
    assert cpu_threads.configure(env).set_variables == () and env == {cpu_threads.POLICY_VARIABLE: "off"}


def test_busy_cores_reads_proc_stat(monkeypatch):
    samples = iter([{0: (100, 1000), 1: (100, 1000)}, {0: (190, 1100), 1: (110, 1100)}])  # core 0: 90 % busy
    monkeypatch.setattr(cpu_threads, "_core_times", lambda: next(samples))
    monkeypatch.setattr(cpu_threads.time, "sleep", lambda s: None)
    assert cpu_threads.busy_cores({0, 1}) == 1
    monkeypatch.setattr(cpu_threads, "_core_times", lambda: {})
    assert cpu_threads.busy_cores({0, 1}) == 0  # unreadable /proc/stat: nothing known busy


def test_core_times_parse_this_machines_proc_stat():
    import os

    times = cpu_threads._core_times()
    if os.path.exists("/proc/stat"):
        assert set(times) >= cpu_threads.available_cores()
        assert all(0 <= busy <= total for busy, total in times.values())


def test_the_command_line_sets_them_before_torch_loads():
    code = "\n".join([
        "import os, sys",
        "from facemogle import cli, cpu_threads",
        "cpu_threads.busy_cores = lambda cores, seconds: 0",
        "try:",
        "    cli.main(['--version'])",
        "except SystemExit:",
        "    pass",
        "loaded_before = 'torch' in sys.modules",
        "import torch",
        "print(loaded_before, os.environ['OMP_NUM_THREADS'], torch.get_num_threads(), os.environ['GOMP_SPINCOUNT'])",
    ])
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    loaded_before, threads, torch_threads, spin = out.stdout.split()[-4:]
    assert loaded_before == "False"
    assert threads == torch_threads == str(len(cpu_threads.available_cores()))
    assert spin == str(cpu_threads.SPIN_COUNT)
