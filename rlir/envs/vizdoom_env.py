"""ViZDoom, headless, with its buttons mapped onto Contract 1.

Signs and timing were checked against the engine's own state (tests/test_vizdoom_env.py):
delta buttons are applied on every tic of a step, a positive TURN_LEFT_RIGHT_DELTA turns right
(Doom's ANGLE decreases), a positive LOOK_UP_DOWN_DELTA looks up (Doom's PITCH decreases; PITCH
grows downwards like VPT's pitch), and the effect is in the state that the same step returns.
The camera that is recorded is the one the engine applied (the change of ANGLE and PITCH over the
step), so clamps and the after-spawn freeze never leave a label the frames do not show.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# Groups ViZDoom cannot show: `use` does nothing visible except at the rare door or switch,
# so the collector never presses it and the group stays null (DESIGN.md allows it; the
# dataset's metadata names it).
NULL_GROUPS = {"use": "ViZDoom's USE has a visible effect only when facing a door or switch; "
                      "left null so that every recorded action is visible to an IDM"}

# The order of the buttons we hand to the engine.
BUTTONS = ("MOVE_FORWARD", "MOVE_BACKWARD", "MOVE_LEFT", "MOVE_RIGHT", "SPEED", "CROUCH",
           "USE", "ATTACK", "JUMP", "DROP_SELECTED_WEAPON", "LOOK_UP_DOWN_DELTA", "TURN_LEFT_RIGHT_DELTA")
KEYS = ("forward", "back", "left", "right", "sprint", "sneak", "use", "attack", "jump", "drop")
VARIABLES = ("POSITION_X", "POSITION_Y", "POSITION_Z", "ANGLE", "PITCH", "ON_GROUND",
             "SELECTED_WEAPON", "ATTACK_READY", "HEALTH", "DEAD")


@dataclass
class DoomConfig:
    wad: str = "freedoom2"           # freedoom1, freedoom2, a scenario name (e.g. deathmatch) or a .wad path
    render_resolution: str = "RES_160X120"
    tics_per_frame: int = 4          # one action repeat for every frame: a walk always looks like a walk
    god_mode: bool = True            # no death screens; monsters still move
    infinite_ammo: bool = True       # attack always fires
    extra_args: list[str] = field(default_factory=list)


def wad_path(name: str) -> str:
    import vizdoom as vzd
    root = Path(vzd.__file__).parent
    p = Path(name)
    if p.suffix == ".wad" and p.is_file():
        return str(p)
    for cand in (root / f"{name}.wad", root / "scenarios" / f"{name}.wad"):
        if cand.is_file():
            return str(cand)
    raise FileNotFoundError(f"no ViZDoom wad named {name!r}")


def wad_maps(path: str | Path) -> set[str]:
    """The map names (map01, e1m1, ...) a WAD file holds, from its lump directory (the engine itself
    waits forever for a map it does not have, so a name is checked here before a game starts)."""
    import re
    import struct
    with open(path, "rb") as f:
        magic, n, offset = struct.unpack("<4sii", f.read(12))
        if magic not in (b"IWAD", b"PWAD"):
            raise FileNotFoundError(f"{path} is not a WAD file")
        f.seek(offset)
        table = f.read(16 * n)
    names = (table[k + 8:k + 16].rstrip(b"\0").decode("ascii", "replace").lower() for k in range(0, len(table), 16))
    return {m for m in names if re.fullmatch(r"map\d\d|e\dm\d", m)}


def engine_processes(workdir: str | Path) -> list[int]:
    """Pids of engine processes (the `vizdoom` binary) started in `workdir` or below (each game runs in a
    folder of its own).
    Linux /proc; elsewhere none are found and closing relies on the engine's own shutdown."""
    root, found = Path(workdir).resolve(), []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            cwd = Path(os.readlink(d / "cwd"))
            exe = (d / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if (cwd == root or root in cwd.parents) and exe.endswith(b"vizdoom"):
            found.append(int(d.name))
    return found


def kill_engines(workdir: str | Path) -> int:
    """SIGKILL every engine process started under `workdir` (they ignore SIGTERM); returns how many."""
    import signal
    pids = engine_processes(workdir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def parse_map(spec: str, default_wad: str) -> tuple[str, str]:
    """'map03' -> (default_wad, 'map03'); 'freedoom1:e1m2' -> ('freedoom1', 'e1m2')."""
    if ":" in spec:
        wad, m = spec.split(":", 1)
        return wad, m.lower()
    return default_wad, spec.lower()


def depth_view(depth: np.ndarray | None) -> dict:
    """How much room there is ahead, to the left and to the right: medians of the depth buffer
    (0..255, larger = farther) over the middle band of rows, in thirds of the width."""
    if depth is None:
        return {"DEPTH_LEFT": 255.0, "DEPTH_AHEAD": 255.0, "DEPTH_RIGHT": 255.0}
    H, W = depth.shape
    band = depth[int(0.35 * H):int(0.65 * H)]
    return {"DEPTH_LEFT": float(np.median(band[:, : W // 3])),
            "DEPTH_AHEAD": float(np.median(band[:, W // 3: 2 * W // 3])),
            "DEPTH_RIGHT": float(np.median(band[:, 2 * W // 3:]))}


class DoomEnv:
    """One game instance. Frames are RGB at `out_hw` (resized with area interpolation)."""

    def __init__(self, cfg: DoomConfig, out_hw: tuple[int, int], workdir: str | Path, wad: str | None = None):
        import vizdoom as vzd
        self.vzd, self.cfg, self.out_hw = vzd, cfg, tuple(out_hw)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.wad = wad or cfg.wad
        self.game = None
        self._map = None

    def _make_game(self):
        vzd = self.vzd
        g = vzd.DoomGame()
        g.set_doom_game_path(wad_path(self.wad))
        g.set_screen_resolution(getattr(vzd.ScreenResolution, self.cfg.render_resolution))
        g.set_screen_format(vzd.ScreenFormat.RGB24)
        g.set_window_visible(False)
        g.set_sound_enabled(False)
        g.set_render_hud(False)
        g.set_render_crosshair(False)
        g.set_render_weapon(True)
        g.set_depth_buffer_enabled(True)   # for the player's eyes only (steering away from walls); not recorded
        g.set_render_messages(False)
        g.set_render_decals(True)
        g.set_render_particles(True)
        g.set_mode(vzd.Mode.PLAYER)
        g.set_available_buttons([getattr(vzd.Button, b) for b in BUTTONS])
        g.set_available_game_variables([getattr(vzd.GameVariable, v) for v in VARIABLES])
        g.set_episode_timeout(0)
        args = ["+freelook 1", "+sv_cheats 1", "+neverswitchonpickup 1", "+sv_allowjump 1", "+sv_allowcrouch 1"]
        if self.cfg.infinite_ammo:
            args.append("+sv_infiniteammo 1")
        g.add_game_args(" ".join(args + list(self.cfg.extra_args)))
        # the engine process writes _vizdoom.ini and _vizdoom/ into its working directory:
        # start it in a directory of its own, then give the caller its directory back
        cwd = os.getcwd()
        os.chdir(self.workdir)
        try:
            g.init()
        finally:
            os.chdir(cwd)
        self.game = g

    def close(self):
        if self.game is not None:
            try:
                self.game.close()
            except Exception:
                pass
            self.game = None
        kill_engines(self.workdir)           # an engine that did not end with the game would run on forever

    def reset(self, map_name: str, seed: int) -> tuple[np.ndarray, dict]:
        if self.game is None:
            self._make_game()
        self.game.set_seed(int(seed) % (2**31))
        self.game.set_doom_map(map_name)
        self.game.new_episode()
        if self.cfg.god_mode:
            self.game.send_game_command("god")
        self.game.send_game_command("give weapons")
        return self._observe()

    def _observe(self) -> tuple[np.ndarray, dict]:
        s = self.game.get_state()
        v = dict(zip(VARIABLES, (float(x) for x in s.game_variables)))
        h, w = self.out_hw
        v.update(depth_view(s.depth_buffer))
        frame = s.screen_buffer
        if frame.shape[:2] != (h, w):
            frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(frame), v

    def step(self, keys: dict, pitch_deg: float, yaw_deg: float) -> tuple[np.ndarray | None, dict | None, np.ndarray]:
        """Hold `keys` and move the camera by (pitch, yaw) degrees over one frame (VPT signs).

        Returns the next frame and variables (None when the episode ended) and the camera change
        the engine applied, (pitch, yaw) in VPT's signs.
        """
        n = self.cfg.tics_per_frame
        before = self.game.get_state().game_variables
        a = [float(bool(keys.get(k, False))) for k in KEYS]
        a += [-pitch_deg / n, yaw_deg / n]          # engine: positive look = up; per tic
        self.game.make_action(a, n)
        if self.game.is_episode_finished():
            return None, None, np.zeros(2, np.float32)
        frame, v = self._observe()
        d_yaw = -((v["ANGLE"] - float(before[3]) + 180.0) % 360.0 - 180.0)   # Doom's angle grows to the left
        d_pitch = v["PITCH"] - float(before[4])                               # Doom's pitch grows downwards
        return frame, v, np.array([d_pitch, d_yaw], dtype=np.float32)

    def command(self, cmd: str) -> None:
        self.game.send_game_command(cmd)

    @property
    def crash_exceptions(self) -> tuple[type, ...]:
        v = self.vzd
        return tuple(getattr(v, n) for n in ("ViZDoomUnexpectedExitException", "ViZDoomErrorException",
                                              "ViZDoomIsNotRunningException", "SignalException")
                     if hasattr(v, n))
