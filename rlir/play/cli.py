"""`rlir play`: its argument parser and command (imports stay light: the parser is built on every call)."""
from __future__ import annotations

from rlir.cli_checks import add_sampler_args


def add_play_parser(sub, common) -> None:
    """Register the verb on the top-level subparsers."""
    p = sub.add_parser("play", parents=[common], help="drive a world model from a web page, one frame per key press",
                       description="Serve a local web page (Flask; every asset local) on which you pick a start "
                       "frame (a test clip of --data, or a PNG of the model's resolution) and drive the world "
                       "model: W/A/S/D move, Shift sprints, C sneaks, Space jumps, F attacks, Q drops, E uses, "
                       "arrow keys turn and look; each press generates the next frame. Each page load is its "
                       "own session (its own cache); a session longer than the model's clip length keeps its "
                       "last --context frames and goes on.")
    p.add_argument("--world-model", required=True, metavar="CKPT", help="world-model checkpoint (ar or diffusion), e.g. RUN/checkpoints/best")
    p.add_argument("--data", metavar="DIR", help="episode store whose test clips give the start frames to pick from")
    p.add_argument("--max-clips", type=int, default=48, metavar="N", help="start frames offered from --data (default 48)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, metavar="N", help="port (default 8000; 0 picks a free one)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--context", type=int, metavar="N", help="frames kept when the window reaches the clip length "
                                               "(default half of it; clip length - 1 keeps the most, re-priming every frame)")
    p.add_argument("--seed", type=int, help="sampling seed of every session (default: a fresh one per session)")
    add_sampler_args(p)
    p.add_argument("--max-sessions", type=int, default=8, metavar="N",
                   help="sessions held at once; the least recently used goes first (default 8)")
    p.set_defaults(func=cmd_play)


def cmd_play(a) -> int:
    from rlir.errors import ConfigError
    from rlir.play.server import create_app, load_starts
    from rlir.play.session import PlayModel, Sessions
    from rlir.utils.serving import listen, serve
    if a.max_sessions < 1:
        raise ConfigError(f"--max-sessions must be at least 1, got {a.max_sessions}")
    sock = listen(a.host, a.port)        # a taken port is told before the model loads
    try:
        pm = PlayModel(a.world_model, a.device, a.context, top_p=a.top_p, temperature=a.temperature,
                       steps=a.steps, solver=a.solver)
        pm.warmup()
        starts, null_groups = [], ()
        if a.data:
            from rlir.data.store import EpisodeStore
            starts = load_starts(a.data, pm, a.max_clips)
            null_groups = tuple(EpisodeStore(a.data).metadata.get("null_groups", {}))
        app = create_app(pm, starts, Sessions(pm, a.max_sessions, seed=a.seed), null_groups)
    except BaseException:
        sock.close()
        raise
    return serve(app, sock, a.host, "rlir play", f"{pm.paradigm} world model {a.world_model} ({pm.resolution[0]}x"
                 f"{pm.resolution[1]}, clip {pm.clip_len} frames, {len(starts)} start frames)", "drive the model",
                 a.verbose)
