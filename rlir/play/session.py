"""The model side of `rlir play`: a world model stepped one frame per action, one state per visitor.

A session holds what the next frame depends on and nothing else: the frames in the model's window
(as codes or latents), the actions between them, and the sampler's cache over them — the AR model's
KV cache (rlir/models/kv_decoder.py) or the DiT's keys and values of the finished, clean frames.
The model was trained on clips of `clip_len` frames (the DiT has a position embedding per frame
index, the AR model saw RoPE positions up to one clip), so a window never grows past it: when it is
full the session keeps its last `context` frames and primes a fresh cache from them. Sampling follows
the evaluation (`rlir generate`): AR top-p 0.8, DiT DPM-Solver++ with 18 steps on a clean context.

No HTTP here: the server (server.py), the tests and bench/play_latency.py drive these classes.
"""
from __future__ import annotations

import io
import secrets
from collections import deque
import threading
import time
from pathlib import Path

import numpy as np
import torch

from rlir.actions import CAMERA_NULL_BIN, GROUPS, N_GROUPS, PITCH, YAW, null_action, validate_actions
from rlir.errors import ConfigError, RlirError

HISTORY = 256          # frames of a session kept for its GIF (the model itself needs only its window)


class BadInput(RlirError):
    """Something a page sent that the server refuses (HTTP 400): a bad action, a wrong-size PNG."""


class NotFound(RlirError):
    """Something the page asked for that the server does not hold (HTTP 404)."""


class UnknownSession(NotFound):
    """A session id never made, or evicted after idling."""


# The on-page controls: name -> (group, class, key). Keys are KeyboardEvent.code values, so W/A/S/D
# sit where they are on any keyboard layout; Ctrl would clash with browser shortcuts (Ctrl+W), so
# sneak is C. Camera bins 1/9 turn 5.8 degrees (the recordings' most common turns after the largest),
# 2/8 look 3.2 degrees: visible in one frame without jumping the view.
CONTROLS: dict[str, tuple[int, int, str]] = {
    "forward": (0, 1, "KeyW"), "back": (0, 2, "KeyS"), "left": (1, 1, "KeyA"), "right": (1, 2, "KeyD"),
    "sprint": (2, 1, "ShiftLeft"), "sneak": (2, 2, "KeyC"), "use": (3, 1, "KeyE"), "attack": (4, 1, "KeyF"),
    "jump": (5, 1, "Space"), "drop": (6, 1, "KeyQ"),
    "look_up": (PITCH, 2, "ArrowUp"), "look_down": (PITCH, 8, "ArrowDown"),
    "turn_left": (YAW, 1, "ArrowLeft"), "turn_right": (YAW, 9, "ArrowRight"),
}


def controls_to_action(names) -> np.ndarray:
    """Control names held together -> one action (9 ints). Two controls of one group cancel (MineWorld's
    rule for a key pair, e.g. W+S = no move); no control at all is the null action (wait a frame)."""
    unknown = [n for n in names if n not in CONTROLS]
    if unknown:
        raise BadInput(f"unknown control {unknown[0]!r}; known: {', '.join(CONTROLS)}")
    a = null_action()
    by_group: dict[int, set[int]] = {}
    for n in set(names):
        g, c, _ = CONTROLS[n]
        by_group.setdefault(g, set()).add(c)
    for g, classes in by_group.items():
        a[g] = classes.pop() if len(classes) == 1 else (CAMERA_NULL_BIN if g in (PITCH, YAW) else 0)
    return a


def parse_action(obj) -> np.ndarray:
    """A step request's body -> action: {"controls": [names]} or {"action": [9 class ids]}."""
    if not isinstance(obj, dict) or ("controls" in obj) == ("action" in obj):
        raise BadInput('send JSON {"controls": [names]} or {"action": [9 class ids]}')
    if "controls" in obj:
        if not isinstance(obj["controls"], list) or not all(isinstance(n, str) for n in obj["controls"]):
            raise BadInput('"controls" must be a list of control names')
        return controls_to_action(obj["controls"])
    a = obj["action"]
    if not isinstance(a, list) or len(a) != N_GROUPS or not all(type(x) is int for x in a):
        raise BadInput(f'"action" must be a list of {N_GROUPS} integers ({", ".join(GROUPS)})')
    arr = np.asarray(a, dtype=np.int64)
    problem = validate_actions(arr[None])
    if problem:
        raise BadInput(f"bad action: {problem}")
    return arr.astype(np.int16)


def read_png(data: bytes, resolution: tuple[int, int]) -> np.ndarray:
    """An uploaded file -> uint8 [H, W, 3]; it must be a PNG of the model's resolution (no silent resize:
    a rescaled frame is not what the model was trained on, and the user should know)."""
    from PIL import Image
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise BadInput("the upload is not a PNG image")
    h, w = resolution
    try:
        img = Image.open(io.BytesIO(data))
        if img.size != (w, h):       # from the header, before decoding a possibly huge image
            raise BadInput(f"the PNG is {img.size[0]}x{img.size[1]} pixels; this model takes {w}x{h} (width x height)")
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except BadInput:
        raise
    except Exception as e:           # PIL raises several types for a damaged file
        raise BadInput(f"the PNG could not be read ({e})") from None


def png_bytes(frame: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


class PlayModel:
    """A world-model checkpoint and its sampler settings, shared by all sessions."""

    def __init__(self, path: str | Path, device: str = "cpu", context: int | None = None, top_p: float = 0.8,
                 temperature: float = 1.0, steps: int = 18, solver: str = "dpm++"):
        from rlir.training.wm_trainer import load_world_model_checkpoint
        from rlir.utils.checkpoint import read_config
        self.paradigm = read_config(path, kind="world_model").get("paradigm")
        self.model, self.cfg, self.codec = load_world_model_checkpoint(path, device)
        self.path, self.device = str(path), device
        self.resolution = tuple(int(x) for x in self.codec.cfg.resolution)
        self.clip_len = int(self.cfg.clip_len)
        self.context = self.clip_len // 2 if context is None else int(context)
        if not 1 <= self.context < self.clip_len:
            raise ConfigError(f"--context must be between 1 and {self.clip_len - 1} (the model's clip length "
                              f"{self.clip_len} minus the frame being made), got {self.context}")
        self.top_p, self.temperature, self.steps, self.solver = top_p, temperature, steps, solver
        # one frame at a time: a frame already uses every core, so two at once only slow each other down
        self.lock = threading.Lock()
        if self.paradigm == "diffusion" and solver == "dpm++":
            import diffusers  # noqa: F401  (a second's import now, not on the first visitor's first frame)

    def warmup(self) -> None:
        """One frame from a blank start, so that lazy imports and first-call allocations are paid now, not on
        the first visitor's first frame (about a second on a CPU)."""
        self.session(np.zeros((*self.resolution, 3), np.uint8), seed=0).step(null_action())

    def sampler(self) -> dict:
        return ({"top_p": self.top_p, "temperature": self.temperature} if self.paradigm == "ar" else
                {"steps": self.steps, "solver": self.solver})

    def session(self, frame0: np.ndarray, seed: int | None = None) -> "PlaySession":
        return (ARSession if self.paradigm == "ar" else DiTSession)(self, frame0, seed)


class PlaySession:
    """One visitor's rollout: the start frame, then one generated frame per step(action)."""

    def __init__(self, pm: PlayModel, frame0: np.ndarray, seed: int | None = None):
        if frame0.shape != (*pm.resolution, 3) or frame0.dtype != np.uint8:
            raise BadInput(f"start frame must be uint8 {pm.resolution[0]}x{pm.resolution[1]}x3, "
                           f"got {frame0.dtype} {'x'.join(map(str, frame0.shape))}")
        self.pm, self.start, self.dev = pm, frame0, pm.device
        self.gen = torch.Generator(device=pm.device).manual_seed(secrets.randbits(62) if seed is None else seed)
        self.reset()

    def reset(self) -> None:
        """Back to the start frame (the random stream goes on, so a replay may differ)."""
        with self.pm.lock, torch.no_grad():
            self.window = [self.pm.codec.encode(torch.from_numpy(self.start)[None].to(self.dev))]
            self.actions: list[torch.Tensor] = []    # actions[i] [1, 9] leads from window[i] to window[i + 1]
            self._prime()
        self.t, self.frame, self.slides = 0, self.start, 0
        self.history, self.history_actions = deque([self.start], HISTORY), deque(maxlen=HISTORY - 1)

    def step(self, action: np.ndarray) -> dict:
        """Generate the frame that `action` leads to; returns it with timing (ms of model time)."""
        a = torch.as_tensor(np.asarray(action, dtype=np.int64)).view(1, N_GROUPS).to(self.dev)
        with self.pm.lock, torch.no_grad():
            t0 = time.perf_counter()
            slid = len(self.window) == self.pm.clip_len
            if slid:                              # window full: keep the last frames, prime a fresh cache
                self.window = self.window[-self.pm.context:]
                self.actions = self.actions[len(self.actions) - (self.pm.context - 1):]
                self._prime()
                self.slides += 1
            z = self._next(a)
            self.window.append(z)
            self.actions.append(a)
            frame = self.pm.codec.decode(z)[0].cpu().numpy()       # .cpu() waits for a GPU: the time is real
            ms = (time.perf_counter() - t0) * 1000
        self.t, self.frame = self.t + 1, frame
        self.history.append(frame)
        self.history_actions.append(np.asarray(action, dtype=np.int16))
        return {"frame": frame, "t": self.t, "ms": ms, "slid": slid, "context": len(self.window) - 1}

    def gif(self) -> bytes:
        """The frames so far (the last HISTORY) as the report draws a clip: each frame over the action taken at it."""
        from rlir.eval.media import clip_gif
        actions = np.stack([*self.history_actions, null_action()])
        return clip_gif([("rlir play", np.stack(self.history))], actions)

    def _between(self) -> torch.Tensor:
        """The actions between the window's frames, [1, K-1, 9]."""
        if not self.actions:
            return torch.zeros(1, 0, N_GROUPS, dtype=torch.long, device=self.dev)
        return torch.stack(self.actions, 1)

    def _prime(self) -> None:
        raise NotImplementedError

    def _next(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ARSession(PlaySession):
    """Token by token with a static KV cache, as `sample` does; the action's tokens are forced in."""

    def _prime(self) -> None:
        from rlir.models.ar_world_model import interleave
        from rlir.models.kv_decoder import KVDecoder
        cfg = self.pm.cfg
        if not hasattr(self, "dec"):              # one buffer for the whole clip, reused at every slide
            self.dec = KVDecoder(self.pm.model, 1, cfg.seq_len(cfg.clip_len))
        self.dec.pos = 0
        codes, acts = torch.stack(self.window, 1), self._between()              # [1, K, N], [1, K-1, 9]
        tokens, _ = interleave(codes, acts, cfg.n_codes)
        self.dec(tokens)                          # its logits would follow a frame; the next token follows an action
        self.pending = tokens.new_zeros(1, 0)     # sampled but not yet fed (the last token of a frame)

    def _next(self, a: torch.Tensor) -> torch.Tensor:
        from rlir.models.ar_world_model import action_tokens, sample_token
        cfg, pm = self.pm.cfg, self.pm
        feed, toks = torch.cat([self.pending, action_tokens(a, cfg.n_codes, self.dev)], 1), []
        for _ in range(cfg.tokens_per_frame):
            feed = sample_token(self.dec(feed), cfg.n_codes, pm.temperature, pm.top_p, self.gen)[0]
            toks.append(feed)
        self.pending = feed
        return torch.cat(toks, 1)                                               # [1, N]


def prime_dit_cache(model, latents: torch.Tensor, actions: torch.Tensor) -> list:
    """Keys and values of clean frames [B, K, N, C] (actions [B, K-1, 9] between them) in one block-causal
    pass: the same cache as K calls of step_frame at sigma 0 (frame 0 after the start token), K times fewer
    passes. A test holds the two equal."""
    from rlir.models.dit_world_model import block_causal_mask
    B, K, N, _ = latents.shape
    prev = torch.cat([actions.new_zeros(B, 1, N_GROUPS), actions], 1)          # frame 0's entry is unused
    c = model.cond(torch.zeros(B, K, device=latents.device), prev, first_is_start=True)     # [B, K, 1, d]
    h, mask, cache = model.embed(latents, 0), block_causal_mask(K, N, latents.device), []
    for blk in model.blocks:
        h, kv = blk(h, c, mask)
        cache.append(kv)
    return cache


class DiTSession(PlaySession):
    """Frame by frame with the clean past cached, solving the ODE as the evaluation does."""

    def _prime(self) -> None:
        self.cache = prime_dit_cache(self.pm.model, torch.stack(self.window, 1), self._between())
        self.pending = None      # the last generated frame, not yet cached: it rides along with the next call

    def _next(self, a: torch.Tensor) -> torch.Tensor:
        from rlir.models.flow_samplers import FrameDenoiser, ode_solve
        from rlir.utils.rand import randn
        m, f, z0 = self.pm.model, len(self.window), self.window[0]
        sigma = lambda s: torch.full((1,), s, device=self.dev)                 # noqa: E731
        x = randn(z0.shape, self.gen, self.dev)
        # as the samplers do (fold_cache): the previous frame's keys come with this frame's first denoiser
        # call, so a key press costs no separate pass at sigma 0 after its frame
        den = FrameDenoiser(m, self.cache, self.pending, a, f)
        x = ode_solve(lambda x_, s: den(x_, sigma(s)), x, self.pm.steps, self.pm.solver)
        self.cache, self.pending = den.cache, (x, sigma(0.0), a)
        return x                                                                # [1, N, C]


class Sessions:
    """Sessions by id, thread-safe. Each page load makes one; an idle one is dropped after `idle_s`,
    and the least recently used when `max_sessions` are held (each holds a cache: memory is bounded)."""

    def __init__(self, pm: PlayModel, max_sessions: int = 8, idle_s: float = 1800.0, seed: int | None = None):
        self.pm, self.max_sessions, self.idle_s, self.seed = pm, max_sessions, idle_s, seed
        self.lock = threading.Lock()
        self.slots: dict[str, dict] = {}        # id -> {"session": PlaySession | None, "lock", "used"}

    def new(self) -> str:
        sid = secrets.token_urlsafe(12)
        with self.lock:
            now = time.monotonic()
            for k in [k for k, s in self.slots.items() if now - s["used"] > self.idle_s]:
                del self.slots[k]
            while len(self.slots) >= self.max_sessions:
                del self.slots[min(self.slots, key=lambda k: self.slots[k]["used"])]
            self.slots[sid] = {"session": None, "lock": threading.Lock(), "used": now}
        return sid

    def _slot(self, sid: str) -> dict:
        with self.lock:
            slot = self.slots.get(sid)
            if slot is None:
                raise UnknownSession(f"unknown session {sid!r} (expired after idling, or the server restarted): "
                                     f"reload the page")
            slot["used"] = time.monotonic()
            return slot

    def start(self, sid: str, frame0: np.ndarray) -> PlaySession:
        slot = self._slot(sid)
        with slot["lock"]:
            slot["session"] = self.pm.session(frame0, self.seed)
            return slot["session"]

    def _session(self, slot: dict) -> PlaySession:
        if slot["session"] is None:
            raise BadInput("pick a start frame first")
        return slot["session"]

    def step(self, sid: str, action: np.ndarray) -> tuple[PlaySession, dict]:
        slot = self._slot(sid)
        with slot["lock"]:                    # one visitor's frames in order, whatever the request threads do
            s = self._session(slot)
            return s, s.step(action)

    def gif(self, sid: str) -> bytes:
        slot = self._slot(sid)
        with slot["lock"]:
            return self._session(slot).gif()

    def reset(self, sid: str) -> PlaySession:
        slot = self._slot(sid)
        with slot["lock"]:
            s = self._session(slot)
            s.reset()
            return s

    def __len__(self) -> int:
        return len(self.slots)
