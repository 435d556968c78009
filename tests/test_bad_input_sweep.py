"""The bad-input sweep (bench/bad_input_sweep.py): over 60 user mistakes across every verb, each a
one-line error with a non-zero exit code that changes no file already written and leaves nothing behind."""
import importlib.util
from pathlib import Path


def test_bad_inputs_are_refused_cleanly(tmp_path):
    path = Path(__file__).resolve().parents[1] / "bench" / "bad_input_sweep.py"
    spec = importlib.util.spec_from_file_location("bad_input_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    res = sweep.sweep(tmp_path)
    print(sweep.format_table(res))
    verbs = {r["input"].split()[0] for r in res["rows"]}
    assert {"collect", "data", "idm", "tokenizer", "autoencoder", "wm", "generate", "evaluate", "posttrain",
            "compare", "report", "demo", "play", "human-eval"} <= verbs
    bad = [r for r in res["rows"] if r["exit_code"] == 0 or r["traceback"] or r["changed"] or r["left_behind"]]
    assert not bad, bad
    assert res["totals"]["inputs"] >= 80
