"""A scripted player that looks like a person: keys held for several frames, camera gestures of
varying size, forward motion most of the time, occasional attack / jump / drop.

It is also designed so that every recorded action is visible in the frames (the IDM's ceiling
depends on it, see ANCHORS.md): sprint only while moving, jump only on the ground and as a tap,
drop only when a droppable weapon is ready, turning away from walls instead of pushing into them,
pitch kept away from the engine's clamps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PolicyConfig:
    p_forward: float = 0.62          # share of time in each fore/back state
    p_back: float = 0.12
    move_hold: tuple[int, int] = (4, 20)     # frames a fore/back choice is held
    p_strafe: float = 0.45           # share of time strafing (split left/right)
    strafe_hold: tuple[int, int] = (3, 12)
    p_sprint: float = 0.35           # while moving
    p_sneak: float = 0.16
    mod_hold: tuple[int, int] = (5, 16)
    attack_rate: float = 0.035       # bursts started per frame
    attack_hold: tuple[int, int] = (1, 6)
    jump_rate: float = 0.05          # taps per frame (on the ground only)
    drop_rate: float = 0.05          # taps per frame (droppable weapon ready only)
    yaw_rate: float = 0.16           # camera gestures started per frame
    yaw_hold: tuple[int, int] = (2, 8)
    yaw_deg: tuple[float, float] = (0.3, 14.0)   # log-uniform gesture speed, degrees per frame
    pitch_rate: float = 0.10
    pitch_hold: tuple[int, int] = (2, 6)
    pitch_deg: tuple[float, float] = (0.3, 9.0)
    pitch_limits: tuple[float, float] = (-25.0, 40.0)   # engine clamps at about -32 / +56
    stuck_speed: float = 1.5         # map units per frame below which pressing a move key is "stuck"
    near_wall: float = 8.0           # depth-buffer units ahead below which a person turns towards open space


class HumanlikePolicy:
    def __init__(self, cfg: PolicyConfig, seed: int):
        self.c = cfg
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.move, self.move_left = 0, 0          # 0 none, 1 forward, 2 back
        self.strafe, self.strafe_left = 0, 0      # 0 none, 1 left, 2 right
        self.mod, self.mod_left = 0, 0            # 0 none, 1 sprint, 2 sneak
        self.attack_left = 0
        self.yaw_speed, self.yaw_left = 0.0, 0
        self.pitch_speed, self.pitch_left = 0.0, 0
        self.last_jump, self.last_drop = -100, -100
        self.prev_pos = None
        self.stuck_frames = 0

    def _hold(self, lo_hi) -> int:
        return int(self.rng.integers(lo_hi[0], lo_hi[1] + 1))

    def _gesture(self, lo_hi) -> float:
        lo, hi = np.log(lo_hi[0]), np.log(lo_hi[1])
        return float(np.exp(self.rng.uniform(lo, hi))) * (1 if self.rng.random() < 0.5 else -1)

    def act(self, v: dict) -> tuple[dict, float, float, list[str]]:
        """Variables of the current state -> (keys, pitch_deg, yaw_deg, engine commands)."""
        c, r = self.c, self.rng
        commands: list[str] = []
        pos = np.array([v["POSITION_X"], v["POSITION_Y"]])
        speed = 0.0 if self.prev_pos is None else float(np.linalg.norm(pos - self.prev_pos))
        self.prev_pos = pos

        # fore/back and strafe: sticky choices
        if self.move_left <= 0:
            u = r.random()
            self.move = 1 if u < c.p_forward else (2 if u < c.p_forward + c.p_back else 0)
            self.move_left = self._hold(c.move_hold)
        if self.strafe_left <= 0:
            self.strafe = (1 if r.random() < 0.5 else 2) if r.random() < c.p_strafe else 0
            self.strafe_left = self._hold(c.strafe_hold)
        self.move_left -= 1
        self.strafe_left -= 1
        moving = self.move != 0 or self.strafe != 0

        # pushing into a wall shows nothing: a person turns away and backs off instead
        self.stuck_frames = self.stuck_frames + 1 if (moving and speed < c.stuck_speed) else 0
        if self.stuck_frames >= 3:
            self.yaw_speed = float(r.uniform(6, 14)) * (1 if r.random() < 0.5 else -1)
            self.yaw_left = self._hold((3, 8))
            self.move, self.move_left = (2 if self.move == 1 else 1), self._hold((3, 8))
            self.strafe, self.strafe_left = 0, self._hold((3, 8))
            self.stuck_frames = 0

        # a person looks where there is room to go: facing a near wall, turn towards the more open side
        if self.move == 1 and v.get("DEPTH_AHEAD", 255.0) < c.near_wall and self.yaw_left <= 0:
            side = 1.0 if v.get("DEPTH_RIGHT", 0.0) >= v.get("DEPTH_LEFT", 0.0) else -1.0
            self.yaw_speed = side * float(r.uniform(4, 12))
            self.yaw_left = self._hold((2, 6))

        # sprint only while moving (invisible otherwise); sneak any time
        if self.mod_left <= 0:
            u = r.random()
            self.mod = 1 if u < c.p_sprint else (2 if u < c.p_sprint + c.p_sneak else 0)
            self.mod_left = self._hold(c.mod_hold)
        self.mod_left -= 1
        sprint = self.mod == 1 and moving
        sneak = self.mod == 2

        # attack bursts
        if self.attack_left <= 0 and r.random() < c.attack_rate:
            self.attack_left = self._hold(c.attack_hold)
        attack = self.attack_left > 0
        self.attack_left -= 1

        # jump: a tap, on the ground, not crouched, not right after another
        jump = (v["ON_GROUND"] > 0 and not sneak and self.t - self.last_jump > 6 and r.random() < c.jump_rate)
        if jump:
            self.last_jump = self.t
        # drop: a tap, with a weapon up and ready (the fist cannot be dropped)
        drop = (v["ATTACK_READY"] > 0 and v["SELECTED_WEAPON"] >= 2 and not attack
                and self.t - self.last_drop > 8 and r.random() < c.drop_rate)
        if drop:
            self.last_drop = self.t
        if self.t - self.last_drop == 1:
            # restock silently so the next drop has a weapon to drop and the engine raises a real one
            commands.append("give weapons")
            if v["SELECTED_WEAPON"] < 2:
                commands.append("use Shotgun")

        # camera gestures: varied speeds, held for a few frames
        if self.yaw_left <= 0:
            self.yaw_speed = self._gesture(c.yaw_deg) if r.random() < c.yaw_rate else 0.0
            self.yaw_left = self._hold(c.yaw_hold) if self.yaw_speed else 1
        yaw = self.yaw_speed
        self.yaw_left -= 1
        if self.pitch_left <= 0:
            self.pitch_speed = self._gesture(c.pitch_deg) if r.random() < c.pitch_rate else 0.0
            self.pitch_left = self._hold(c.pitch_hold) if self.pitch_speed else 1
            lo, hi = c.pitch_limits
            # lean the next gesture back towards level when far from it
            if v["PITCH"] < lo / 2 and self.pitch_speed < 0 or v["PITCH"] > hi / 2 and self.pitch_speed > 0:
                self.pitch_speed = -self.pitch_speed
        pitch = float(np.clip(self.pitch_speed, c.pitch_limits[0] - v["PITCH"], c.pitch_limits[1] - v["PITCH"]))
        self.pitch_left -= 1

        keys = {"forward": self.move == 1, "back": self.move == 2, "left": self.strafe == 1,
                "right": self.strafe == 2, "sprint": sprint, "sneak": sneak, "use": False,
                "attack": attack, "jump": jump, "drop": drop}
        self.t += 1
        return keys, pitch, yaw, commands
