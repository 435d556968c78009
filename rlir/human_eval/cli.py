"""`rlir human-eval make | serve | report`: parser and commands (imports stay light: the parser is built on
every call)."""
from __future__ import annotations

from rlir.cli_checks import add_sampler_args


def add_human_eval_parser(sub, common) -> None:
    """Register the verb on the top-level subparsers."""
    h = sub.add_parser("human-eval", parents=[common], help="A/B human evaluation of two world models: trials, "
                       "a voting page, win rates")
    hsub = h.add_subparsers(dest="human_eval_verb", metavar="VERB")
    hsub.required = True

    m = hsub.add_parser("make", parents=[common], help="build A/B trials: the same test clips through two world models",
                        description="For --clips held-out test clips of --data (picked with --seed, spread over "
                        "episodes): frame 0 and the clip's actions through each world model (AR or diffusion; the "
                        "evaluation's samplers), both videos side by side in one GIF with the actions drawn under "
                        "them, sides balanced and shuffled. Writes PAIRS/trials.json and PAIRS/videos/*.gif.")
    m.add_argument("--data", required=True, metavar="DIR", help="episode store; its test split gives the clips")
    m.add_argument("--models", required=True, nargs=2, metavar="NAME=CKPT",
                   help="the two world-model checkpoints, e.g. base=RUN/checkpoints/best rlir=RL/checkpoints/policy")
    m.add_argument("--out", required=True, metavar="PAIRS", help="pairs folder to write (must be new or empty)")
    m.add_argument("--clips", type=int, default=24, metavar="N", help="trials (default 24)")
    m.add_argument("--frames", type=int, help="frames per video, frame 0 given (default 16, at most the clip length)")
    m.add_argument("--seed", type=int, default=0, help="clip choice, sides and sampling (default 0)")
    m.add_argument("--batch-size", type=int, default=8, help="clips per batch (default 8)")
    add_sampler_args(m)
    m.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    m.set_defaults(func=cmd_make)

    s = hsub.add_parser("serve", parents=[common], help="serve the voting page; votes go to an SQLite file",
                        description="A local web page (Flask, every asset local): a rater enters an id, sees one "
                        "trial at a time (Left / Right, models unnamed), answers 'Which video follows the actions "
                        "better?' and 'Which looks better?' (Left / Same / Right). One vote per rater and trial "
                        "(a second one is refused, HTTP 409); several raters may vote at once.")
    s.add_argument("--pairs", required=True, metavar="DIR", help="a folder made by `rlir human-eval make`")
    s.add_argument("--db", required=True, metavar="FILE", help="votes database (SQLite; made if missing)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                                                       "0.0.0.0 for raters on other machines)")
    s.add_argument("--port", type=int, default=8001, metavar="N", help="port (default 8001; 0 picks a free one)")
    s.set_defaults(func=cmd_serve)

    r = hsub.add_parser("report", parents=[common], help="win rates per question with 95% intervals",
                        description="For each question: each model's win rate and the tie rate (adding up to 1), "
                        "model A's share of the decisive votes, n votes, n raters, with 95% Wilson intervals on an "
                        "effective n (design effect from the clustering of votes by rater).")
    r.add_argument("--db", required=True, metavar="FILE", help="votes database of `rlir human-eval serve`")
    r.add_argument("--json", metavar="OUT", help="also write the summary as JSON here")
    r.set_defaults(func=cmd_report)


def cmd_make(a) -> int:
    from rlir.human_eval.make import make_pairs, parse_models
    from rlir.utils.output_guard import Input, Output, check_output
    models = parse_models(a.models)
    check_output(Output(a.out, "--out"), [Input(a.data, "--data")] +
                 [Input(ck, f"--models {n}", dataset=False) for n, ck in models])
    res = make_pairs(a.data, models, a.out, clips=a.clips, frames=a.frames, seed=a.seed, batch_size=a.batch_size,
                     temperature=a.temperature, top_p=a.top_p, steps=a.steps, solver=a.solver, device=a.device,
                     progress=not a.quiet, command=_make_command(a))
    n, left = res["trials"], res["a_left"]
    print(f"made {n} trials of {res['frames']} frames ({res['models'][0]} on the left in {left}, on the right in "
          f"{n - left}) into {a.out}")
    return 0


def _make_command(a) -> str:
    """The command as parsed, every setting spelled out (sys.argv is not the command when main() is called
    from Python)."""
    import shlex
    parts = ["rlir", "human-eval", "make", "--data", a.data, "--models", *a.models, "--out", a.out,
             "--clips", a.clips, "--seed", a.seed, "--batch-size", a.batch_size, "--temperature", a.temperature,
             "--top-p", a.top_p, "--steps", a.steps, "--solver", a.solver, "--device", a.device]
    if a.frames:
        parts += ["--frames", a.frames]
    return shlex.join(str(x) for x in parts)


def cmd_serve(a) -> int:
    from rlir.human_eval import db
    from rlir.human_eval.make import load_trials
    from rlir.human_eval.server import create_app
    from rlir.utils.output_guard import Output, check_location
    from rlir.utils.serving import listen, serve
    manifest = load_trials(a.pairs)
    check_location(Output(a.db, "--db", "file"))
    sock = listen(a.host, a.port)
    try:
        db.open_db(a.db)
        db.bind_pairs(a.db, manifest["pairs_id"], [m["name"] for m in manifest["models"]], a.pairs)
        app = create_app(a.pairs, manifest, a.db)
    except BaseException:
        sock.close()
        raise
    return serve(app, sock, a.host, "rlir human-eval", f"{len(manifest['trials'])} trials of {a.pairs}, votes into "
                 f"{a.db},", "vote", a.verbose)


def cmd_report(a) -> int:
    from rlir.human_eval.report import format_text, summarize
    from rlir.utils.io import atomic_write_json
    from rlir.utils.output_guard import Output, check_location
    if a.json:
        check_location(Output(a.json, "--json", "file"))
    s = summarize(a.db)
    print(format_text(s))
    if a.json:
        atomic_write_json(a.json, s)
        print(f"wrote {a.json}")
    return 0
