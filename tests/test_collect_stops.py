"""The collector never hangs on a map that is not there and never leaves a game process behind:
killed by SIGTERM, SIGINT or SIGKILL mid-collection, none of its ViZDoom engines is left running."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlir.cli import main
from rlir.envs.vizdoom_env import engine_processes, kill_engines

ROOT = Path(__file__).resolve().parents[1]


def test_a_map_the_wad_lacks_is_refused_before_any_game_starts(tmp_path, capsys):
    t = time.time()
    assert main(["-q", "collect", "--out", str(tmp_path / "d"), "--episodes", "1", "--map", "map99"]) == 2
    err = capsys.readouterr().err
    assert "map99" in err and "freedoom2.wad" in err and "Traceback" not in err
    assert time.time() - t < 10 and not (tmp_path / "d").exists()       # nothing left behind either


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_killed_collection_leaves_no_game_process(tmp_path, how):
    out = tmp_path / "d"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlir", "-q", "collect", "--out", str(out), "--episodes", "40",
                             "--frames", "300", "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 60
        while len(engine_processes(out)) < 2 and time.time() < deadline:   # both games are playing
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        assert len(engine_processes(out)) == 2
        os.kill(proc.pid, how)
        proc.wait(30)
        deadline = time.time() + 15            # after a SIGKILL the workers hear of it from the kernel
        while engine_processes(out) and time.time() < deadline:
            time.sleep(0.2)
        assert engine_processes(out) == []
        if how != signal.SIGKILL:
            assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        kill_engines(out)                       # never leave one behind, even when the test fails
