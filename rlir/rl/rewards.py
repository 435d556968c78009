"""The inverse reward (paper Eq. 3) and its variants, on top of an IDM.

    R = (1/n) sum_i 1[a_hat_i == a_i]      over the n = T-1 actions a video of T frames shows

`a_hat` is the IDM's argmax (deterministic). Every mode is a mean over frames of a per-frame value
r_i (returned by `per_frame_inverse_reward`, [B, n]), so frame-level credit can use r_i directly:
  "all":        r_i = 1 when all 9 groups match (the paper's Eq. 3),
  "per_group":  r_i = the share of the 9 groups that match (partial credit),
  "loglik":     r_i = sum_g log p_IDM(a_i^g | video) (soft),
  "balanced":   per-group balanced accuracy of the argmax over the clip: the mean recall over the
                classes that occur in the clip's true actions, averaged over the groups the data shows
                (a group `dataset.json` names as null is left out; camera pitch/yaw count as their
                direction: down/none/up, left/none/right). Per frame,
                    r_i = mean_g 1[a_hat_i^g == a_i^g] * n / (K_g * n_g(a_i^g))
                with K_g the classes present in the clip and n_g(c) the frames of class c, so that
                (1/n) sum_i r_i is exactly the balanced accuracy.
  "f1_gain":    the first-order change of the pooled macro F1 (the evaluation's metric, MineWorld's
                protocol) that each frame's IDM reading brings to the batch it is scored with: with C_g
                the batch's pooled confusion matrix of group g (plus a small prior), and for class c
                D_c = 2 TP_c + FP_c + FN_c, a frame of true class t read as p adds
                    dF1/dTP_t = 2 (FP_t + FN_t) / D_t^2                   when p == t
                    dF1/dFP_p + dF1/dFN_t = -2 TP_p / D_p^2 - 2 TP_t / D_t^2   otherwise,
                averaged over the shown groups (camera as direction) and the classes present, in units
                of 1/N (N frames in the batch). Its optimum is the batch's pooled F1, which a frozen
                video does not reach (a constant reading has F1 2p/(1+p) on one class, 0 on the others).
Why "balanced": `per_group` pays a frozen or uninformative video (the IDM then predicts "no action",
which is right on most frames of rare groups), so "move less" scores as well as "follow the actions".
Under balanced accuracy a constant prediction scores 1/K_g on every group with K_g > 1 classes, the
IDM's confidence is not paid (argmax, not probabilities), and every class of a group counts equally.
"""
from __future__ import annotations

import torch

from rlir.actions import CAMERA_NULL_BIN, GROUPS, N_CLASSES

MODES = ("all", "per_group", "loglik", "balanced", "f1_gain", "f1_gain_soft")
POOLED = ("f1_gain", "f1_gain_soft")     # modes whose value depends on the whole batch scored together
CAMERA = (7, 8)


def shown_groups(null_groups=()) -> tuple[int, ...]:
    """Indices of the 9 groups that the data shows (dataset.json's `null_groups` left out)."""
    null = set(null_groups or ())
    unknown = null - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown null groups {sorted(unknown)}; groups are {GROUPS}")
    return tuple(g for g, name in enumerate(GROUPS) if name not in null)


def _direction(bins: torch.Tensor) -> torch.Tensor:
    """Camera bin 0..10 -> 0 (none), 1 (negative), 2 (positive)."""
    d = torch.sign(bins - CAMERA_NULL_BIN).long()
    return torch.where(d < 0, torch.full_like(d, 1), torch.where(d > 0, torch.full_like(d, 2), d))


def balanced_accuracy_per_frame(pred: torch.Tensor, true: torch.Tensor, n_classes: int) -> torch.Tensor:
    """One group: pred, true [B, n] class ids -> [B, n] whose mean over frames is the clip's balanced
    accuracy (mean recall over the classes present in `true`)."""
    onehot = torch.nn.functional.one_hot(true, n_classes).float()            # [B, n, K]
    count = onehot.sum(1)                                                     # [B, K]
    present = (count > 0).float().sum(-1, keepdim=True)                      # [B, 1]
    n = true.shape[1]
    weight = n / (present * count.gather(1, true))                           # [B, n]
    return (pred == true).float() * weight


def _one_pool(C: torch.Tensor) -> torch.Tensor:
    """The pool of a pooled reward when this process holds the whole batch."""
    return C


def confusion(pred: torch.Tensor, true: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Class ids (any shape) -> counts C [K, K] (true, read), float64."""
    C = torch.bincount((true.flatten() * n_classes + pred.flatten()).long(), minlength=n_classes ** 2)
    return C.view(n_classes, n_classes).double()


def f1_gain_weights(pred: torch.Tensor, true: torch.Tensor, n_classes: int, prior: float = 0.5) -> torch.Tensor:
    """One group's pooled readings (any shape, class ids) -> W [K, K] with W[t, p] the first-order change
    of macro F1 (over the classes present) when one more frame of true class t is read as p."""
    return f1_gain_weights_from_confusion(confusion(pred, true, n_classes), prior)


def f1_gain_weights_from_confusion(C: torch.Tensor, prior: float = 0.5) -> torch.Tensor:
    """A pooled confusion matrix C [K, K] (true, read; counts or expected counts) -> W [K, K] as above."""
    present = (C.sum(0) + C.sum(1)) >= 0.5      # expected counts: a softmax's 1e-30 on a class is not a class present
    C = C.double() + prior * present[:, None] * present[None, :]
    tp = C.diag()
    fp, fn = C.sum(0) - tp, C.sum(1) - tp
    D = (2 * tp + fp + fn).clamp(min=1e-9)
    d_tp, d_err = 2 * (fp + fn) / D ** 2, -2 * tp / D ** 2      # d_err: both dF1/dFP and dF1/dFN
    W = d_err[None, :] + d_err[:, None]                           # W[t, p] = dFP_p + dFN_t
    W.diagonal().copy_(d_tp)
    return (W / present.sum().clamp(min=1)).float()


def per_frame_inverse_reward(logits: list[torch.Tensor], actions: torch.Tensor, mode: str = "all",
                             groups: tuple[int, ...] | None = None) -> torch.Tensor:
    """logits: per group [B, n, K_g]; actions [B, >=n, 9] -> per-frame reward [B, n] (float32).

    `groups` (mode balanced only): the group indices scored; default all 9."""
    if mode not in MODES:
        raise ValueError(f"reward mode must be one of {MODES}, got {mode!r}")
    n = logits[0].shape[1]
    true = actions[:, :n].long()
    if mode == "loglik":
        lp = torch.stack([torch.log_softmax(lg.float(), -1).gather(-1, true[..., g:g + 1]).squeeze(-1)
                          for g, lg in enumerate(logits)], -1)              # [B, n, 9]
        return lp.sum(-1)
    if mode == "f1_gain_soft":
        return f1_gain_soft_per_frame(logits, true, groups)
    pred = torch.stack([lg.argmax(-1) for lg in logits], -1)                # [B, n, 9]
    if mode == "f1_gain":
        return f1_gain_per_frame(pred, true, groups)
    if mode == "balanced":
        groups = tuple(range(len(GROUPS))) if groups is None else tuple(groups)
        if not groups:
            raise ValueError("the balanced reward needs at least one shown group")
        per = []
        for g in groups:
            p, t, k = pred[..., g], true[..., g], N_CLASSES[g]
            if g in CAMERA:
                p, t, k = _direction(p), _direction(t), 3
            per.append(balanced_accuracy_per_frame(p, t, k))
        return torch.stack(per, -1).mean(-1)
    match = pred == true
    return match.all(-1).float() if mode == "all" else match.float().mean(-1)


def _group_probs(logits: list[torch.Tensor], g: int) -> torch.Tensor:
    """The IDM's distribution over group g's classes [B, n, K] (camera: over its 3 directions)."""
    p = torch.softmax(logits[g].float(), -1)
    if g in CAMERA:             # bins below the null bin: one way; above: the other
        p = torch.stack([p[..., CAMERA_NULL_BIN], p[..., :CAMERA_NULL_BIN].sum(-1),
                         p[..., CAMERA_NULL_BIN + 1:].sum(-1)], -1)
    return p


def f1_gain_soft_per_frame(logits: list[torch.Tensor], true: torch.Tensor,
                           groups: tuple[int, ...] | None = None, pool=_one_pool) -> torch.Tensor:
    """The f1_gain reward in expectation over the IDM's reading instead of at its argmax (Rao-Blackwellised:
    lower variance, same optimum). With P[b, i] the IDM's distribution for frame i and C the batch's
    expected confusion matrix, r_i = sum_p P[i, p] W[t_i, p] x N. Every wrong class a frame puts mass on
    costs (W's off-diagonal is negative), so spreading probability over rare classes is not paid.
    `pool`: sums a confusion matrix over the processes that share the batch (default: this batch is the pool)."""
    groups = tuple(range(len(GROUPS))) if groups is None else tuple(groups)
    per = []
    for g in groups:
        P = _group_probs(logits, g)
        t = true[..., g].long()
        k = P.shape[-1]
        if g in CAMERA:
            t = _direction(t)
        onehot = torch.nn.functional.one_hot(t, k).to(P.dtype)
        C = pool(torch.einsum("bnt,bnp->tp", onehot, P).double())
        W = f1_gain_weights_from_confusion(C).to(P.device)
        per.append((P * W[t]).sum(-1) * C.sum().item())            # x N: the pool's frames
    return torch.stack(per, -1).mean(-1)


def f1_gain_per_frame(pred: torch.Tensor, true: torch.Tensor, groups: tuple[int, ...] | None = None,
                      pool=_one_pool) -> torch.Tensor:
    """pred, true [B, n, 9] -> [B, n]: each frame's first-order share of the batch's pooled macro F1, x N."""
    groups = tuple(range(len(GROUPS))) if groups is None else tuple(groups)
    per = []
    for g in groups:
        p, t, k = pred[..., g], true[..., g], N_CLASSES[g]
        if g in CAMERA:
            p, t, k = _direction(p), _direction(t), 3
        C = pool(confusion(p, t, k))
        W = f1_gain_weights_from_confusion(C).to(pred.device)
        per.append(W[t, p] * C.sum().item())
    return torch.stack(per, -1).mean(-1)


def inverse_reward(logits: list[torch.Tensor], actions: torch.Tensor, mode: str = "all",
                   groups: tuple[int, ...] | None = None) -> torch.Tensor:
    """logits: per group [B, n, K_g]; actions [B, >=n, 9] -> reward [B] (float32): Eq. 3's mean over frames."""
    return per_frame_inverse_reward(logits, actions, mode, groups).mean(-1)


def _ranks_sum():
    """Under torchrun the pool of a pooled reward is the whole batch, every rank's share summed (so N
    processes give what one gives); every rank scores its rollouts at the same point of a step."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _one_pool

    def pool(C: torch.Tensor) -> torch.Tensor:
        dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
        C = C.double().to(dev).clone()
        dist.all_reduce(C)
        return C.cpu()
    return pool


class InverseReward:
    """Scores generated videos with a frozen IDM: batched, no gradient, deterministic.

    `null_groups`: groups the data never shows (dataset.json), left out by the balanced mode."""

    def __init__(self, idm: torch.nn.Module, mode: str = "all", batch_size: int = 64, device: str = "cpu",
                 null_groups=()):
        if mode not in MODES:
            raise ValueError(f"reward mode must be one of {MODES}, got {mode!r}")
        self.idm, self.mode, self.batch_size, self.device = idm.eval(), mode, batch_size, device
        self.groups = shown_groups(null_groups)
        for p in self.idm.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def per_frame(self, frames, actions) -> torch.Tensor:
        """frames uint8 [B, T, H, W, 3], actions [B, T, 9] -> per-frame reward [B, T-1]."""
        frames, actions = torch.as_tensor(frames), torch.as_tensor(actions)
        if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 [B, T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
        if actions.shape[:2] != frames.shape[:2] or actions.shape[-1] != 9:
            raise ValueError(f"actions must be [B, T, 9] matching frames {list(frames.shape[:2])}, "
                             f"got {list(actions.shape)}")
        out = []
        for s in range(0, len(frames), self.batch_size):
            logits = self.idm(frames[s:s + self.batch_size].to(self.device))
            if self.mode in POOLED:          # the readings first; the batch's pool decides the reward
                out.append([lg.float().cpu() for lg in logits] if self.mode == "f1_gain_soft" else
                           torch.stack([lg.argmax(-1) for lg in logits], -1).cpu())
                continue
            out.append(per_frame_inverse_reward(logits, actions[s:s + self.batch_size].to(self.device), self.mode,
                                                self.groups).cpu())
        if self.mode == "f1_gain_soft":
            logits = [torch.cat(x) for x in zip(*out)]
            return f1_gain_soft_per_frame(logits, actions[:, :logits[0].shape[1]].long(), self.groups, _ranks_sum())
        if self.mode in POOLED:
            pred = torch.cat(out)
            return f1_gain_per_frame(pred, actions[:, :pred.shape[1]].long(), self.groups, _ranks_sum())
        return torch.cat(out)

    def __call__(self, frames, actions) -> torch.Tensor:
        """frames uint8 [B, T, H, W, 3], actions [B, T, 9] -> reward [B]."""
        return self.per_frame(frames, actions).mean(-1)


# --- Pluggable rewards for post-training ---------------------------------------------------------
# A reward function maps (generated video, real video, actions) to one number per video:
#     fn(generated uint8 [B, T, H, W, 3], real uint8 [B, T, H, W, 3], actions int [B, T, 9]) -> float [B]
# and may also give one number per generated frame, fn.per_frame(...) -> [B, T-1] (index i: frame i+1,
# the frame action i leads to), whose mean over frames is fn(...). Frame-level credit uses it; a
# function without it counts the same for every frame.
# Frame 0 is the given frame in both videos; rewards look at frames 1..T-1 where they compare pixels.

class InverseRewardFn:
    """RLIR's reward (Eq. 3): the share of frames whose actions the IDM recovers from the generated video."""

    def __init__(self, idm: torch.nn.Module, mode: str = "all", batch_size: int = 64, device: str = "cpu",
                 null_groups=()):
        self.name = "inverse"
        self.scorer = InverseReward(idm, mode, batch_size, device, null_groups)

    def per_frame(self, generated, real, actions) -> torch.Tensor:
        return self.scorer.per_frame(generated, actions)

    def __call__(self, generated, real, actions) -> torch.Tensor:
        return self.scorer(generated, actions)


class RandomReward:
    """The control: rewards that carry no information about the video, uniform in [0, 1) per frame.

    Seeded by `seed` and the video's own bytes, so a resumed run draws the same numbers. Whatever a run
    on this reward does (darkening, entropy loss, PSNR change) is drift of the optimiser, not learning."""

    def __init__(self, seed: int = 0):
        self.name, self.seed = "random", int(seed)

    def per_frame(self, generated, real, actions) -> torch.Tensor:
        import hashlib
        g = torch.as_tensor(generated)
        out = []
        for v in g:
            key = int.from_bytes(hashlib.blake2b(v.contiguous().numpy().tobytes(), digest_size=8).digest(), "little")
            gen = torch.Generator().manual_seed((key ^ (self.seed * 2_654_435_761)) % (2 ** 63))
            out.append(torch.rand(g.shape[1] - 1, generator=gen))
        return torch.stack(out)

    def __call__(self, generated, real, actions) -> torch.Tensor:
        return self.per_frame(generated, real, actions).mean(-1)


class PixelReward:
    """RLVR-World's baseline, reward = -(L1 + perceptual term) against the real frames 1..T-1.

    RLVR-World's perceptual term is LPIPS, whose network weights cannot be fetched offline, so the term
    here is (1 - SSIM) (torchmetrics, Gaussian window 11): the reward is named `pixel_l1_ssim`, not LPIPS."""

    def __init__(self):
        self.name = "pixel_l1_ssim"

    @torch.no_grad()
    def per_frame(self, generated, real, actions) -> torch.Tensor:
        """-(L1 + 1 - SSIM) of each generated frame 1..T-1 -> [B, T-1]."""
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim
        g = torch.as_tensor(generated)[:, 1:].float() / 255
        r = torch.as_tensor(real)[:, 1:].float() / 255
        B, T = g.shape[:2]
        l1 = (g - r).abs().flatten(2).mean(2)
        flat = lambda x: x.reshape(B * T, *x.shape[2:]).permute(0, 3, 1, 2)      # noqa: E731
        s = ssim(flat(g), flat(r), data_range=1.0, reduction="none").view(B, T)
        return -(l1 + (1 - s))

    def __call__(self, generated, real, actions) -> torch.Tensor:
        return self.per_frame(generated, real, actions).mean(-1)


class BrightnessMatch:
    """A fidelity guard, not a quality score: -|mean brightness of generated frame t - that of real frame t|
    / 255, per frame 1..T-1. Post-training a tiny world model on an IDM reward drifts darker (a dark frame
    reads as "no action"); next to the inverse reward, this term makes that drift cost reward."""

    def __init__(self):
        self.name = "brightness_match"

    @torch.no_grad()
    def per_frame(self, generated, real, actions) -> torch.Tensor:
        g = torch.as_tensor(generated)[:, 1:].float().flatten(2).mean(2)
        r = torch.as_tensor(real)[:, 1:].float().flatten(2).mean(2)
        return -(g - r).abs() / 255

    def __call__(self, generated, real, actions) -> torch.Tensor:
        return self.per_frame(generated, real, actions).mean(-1)


class PreferenceReward:
    """A learned-preference reward (VideoAlign-like): any model that scores a video, [B,T,H,W,3] uint8 -> [B].

    Give it as a callable, or as "package.module:function" (the function may build and cache its model)."""

    def __init__(self, scorer, name: str = "preference"):
        if isinstance(scorer, str):
            import importlib
            mod, _, fn = scorer.partition(":")
            if not mod or not fn:
                from rlir.errors import ConfigError
                raise ConfigError(f"preference reward {scorer!r} must be given as 'module:function'")
            try:
                scorer = getattr(importlib.import_module(mod), fn)
            except (ImportError, AttributeError) as e:
                from rlir.errors import ConfigError
                raise ConfigError(f"preference reward {scorer!r} cannot be loaded: {e}") from None
        self.scorer, self.name = scorer, name

    @torch.no_grad()
    def __call__(self, generated, real, actions) -> torch.Tensor:
        return torch.as_tensor(self.scorer(torch.as_tensor(generated)), dtype=torch.float32)


def combine_rewards(fns: list, weights: list[float], generated, real, actions, per_frame: bool = False
                    ) -> tuple[torch.Tensor, dict]:
    """Weighted sum of reward functions -> (total, {name: [B]}); total is [B], or [B, T-1] with
    `per_frame` (a function without `per_frame` counts the same for every frame). A function that
    returns anything but one finite number per video (or per frame) is an error that names it."""
    from rlir.errors import RlirError
    B, n = len(generated), torch.as_tensor(generated).shape[1] - 1
    total, parts = torch.zeros((B, n) if per_frame else (B,)), {}
    for fn, w in zip(fns, weights):
        name = getattr(fn, "name", str(fn))
        frame_level = per_frame and hasattr(fn, "per_frame")
        r = fn.per_frame(generated, real, actions) if frame_level else fn(generated, real, actions)
        r = torch.as_tensor(r).detach().float().cpu()
        want = (B, n) if frame_level else (B,)
        if r.shape != want:
            raise RlirError(f"reward function {name!r} returned shape {list(r.shape)}, expected {list(want)} "
                            f"(one number per {'frame' if frame_level else 'video'})")
        if not torch.isfinite(r).all():
            raise RlirError(f"reward function {name!r} returned non-finite values")
        parts[name] = r.mean(-1) if frame_level else r
        total += w * (r if frame_level or not per_frame else r[:, None])
    return total, parts
