"""`rlir report`: one self-contained HTML page from evaluate outputs and training logs."""
import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from rlir.cli import main
from rlir.eval.evaluate import evaluate
from tests.test_evaluate import T, make_data, make_generated, make_idm

VOID = {"meta", "link", "img", "br", "hr", "input"}


class Checker(HTMLParser):
    """Collects table rows and image sources, and checks that every non-void tag is closed in order."""

    def __init__(self):
        super().__init__()
        self.stack, self.rows, self.cell, self.srcs, self.errors = [], [], None, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th") and self.rows:
            self.cell = ""
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.rows and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rep")
    data = make_data(root / "data", n_test=2)
    idm = make_idm(root / "idm")
    evaluate(str(root / "data"), str(root / "real"), idm, generated=str(root / "data"), frames=T, n_boot=50,
             progress=False)
    gen = make_generated(root / "gen", data, lambda f: (f * 0.6).astype(np.uint8))
    (root / "post").mkdir()
    evaluate(str(root / "data"), str(root / "post" / "eval"), idm, generated=gen, frames=T, n_boot=50, progress=False)
    rows = [{"step": s, "reward": 0.1 + 0.01 * s, "reward_std": 0.05, "kl": 0.002 * s, "frac_reward_zero_std": 0.25,
             "judge/reward": 0.08 + 0.01 * s, "clip_ratio/region_mean": 0.01} for s in range(1, 21)]
    rows[3].pop("kl")                                                # keys may be missing
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 21, "rew'   # a line cut by a kill
    (root / "post" / "metrics.jsonl").write_text(text)
    return root


def test_report_page(runs, capsys):
    out = runs / "report"
    assert main(["-q", "report", str(runs / "real"), str(runs / "post"), "--out", str(out),
                 "--label", f"{runs / 'post'}=RLIR post-trained", "--videos", "2"]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    p = Checker()
    p.feed(page)
    p.close()
    assert not p.errors and not p.stack, (p.errors, p.stack)
    real = json.loads((runs / "real" / "metrics.json").read_text())
    post = json.loads((runs / "post" / "eval" / "metrics.json").read_text())
    body = [r for r in p.rows if r and not r[0].startswith("model")]
    n = real["n_clips"]
    assert [r[0] for r in body] == [f"real clips (GT)real, {n} clips", f"RLIR post-trainedposttrained, {n} clips"]
    header = next(r for r in p.rows if r and r[0] == "model")
    col = {h: i for i, h in enumerate(header)}
    assert body[0][col["PSNR"]].startswith("100.00")
    assert body[1][col["PSNR"]].startswith(f"{post['psnr']['mean']:.2f}")
    assert body[0][col["IDM F1"]].startswith(f"{real['reward_idm']['metrics']['f1_macro']:.3f}")
    assert body[1][col["SSIM"]].startswith(f"{post['ssim']['mean']:.3f}")
    assert body[1][col["Judge F1"]] == "—"          # no judge given
    # everything embedded: GIFs that animate T frames, PNG figures; nothing fetched from elsewhere
    gifs = [s for s in p.srcs if s.startswith("data:image/gif;base64,")]
    pngs = [s for s in p.srcs if s.startswith("data:image/png;base64,")]
    assert len(gifs) == 2 and len(pngs) == 3 and len(p.srcs) == 5
    im = Image.open(io.BytesIO(base64.b64decode(gifs[0].split(",", 1)[1])))
    assert im.format == "GIF" and im.n_frames == T and im.size[0] > 2 * 64
    assert not re.search(r"""(src|href)=['"](?!data:)""", page)
    for f in ("curves.png", "per_group_f1.png", "brightness.png", "clip_0.gif", "clip_1.gif", "report.json"):
        assert (out / f).is_file()
    assert Image.open(out / "curves.png").format == "PNG"
    summary = json.loads((out / "report.json").read_text())
    assert [r["role"] for r in summary["rows"]] == ["real", "posttrained"]


def test_report_roles_and_errors(runs, capsys, tmp_path):
    # role override; a run folder with only an IDM-style log draws no curve; a folder with nothing is an error
    (tmp_path / "idmlog").mkdir()
    (tmp_path / "idmlog" / "metrics.jsonl").write_text(json.dumps({"step": 1, "val/f1_macro": 0.3}) + "\n")
    assert main(["-q", "report", str(runs / "post"), str(tmp_path / "idmlog"), "--out", str(tmp_path / "r"),
                 "--role", f"{runs / 'post'}=base", "--videos", "0"]) == 0
    summary = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [r["role"] for r in summary["rows"]] == ["base"] and "curves.png" in summary["figures"]
    (tmp_path / "nothing").mkdir()
    assert main(["-q", "report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "neither an evaluation" in err
    assert main(["-q", "report", str(runs / "real"), "--out", str(tmp_path / "r3"), "--role", "x=y"]) == 2
    assert "role must be one of" in capsys.readouterr().err
