"""The AR world model: token layout, sampler/scorer agreement, masks, training, checkpoints."""
import numpy as np
import pytest
import torch

from rlir.actions import TOKENS_PER_ACTION
from rlir.data.store import EpisodeStore
from rlir.errors import RlirError
from rlir.models.ar_world_model import (PRESETS, ARConfig, build_llama, interleave, next_token_loss,
                                        policy_logprobs, sample, score, split_frames)
from rlir.models.conv_ae import psnr
from rlir.models.tokenizer import TokenizerConfig, VQTokenizer
from tests.conftest import make_episode

CFG = ARConfig(n_codes=32, tokens_per_frame=6, clip_len=5, d_model=32, mlp=64, n_heads=4, n_layers=2)


def _model(seed=0):
    torch.manual_seed(seed)
    return build_llama(CFG).eval()


def _rollout(model, top_p=0.8, temperature=1.0, seed=0, B=3):
    g = torch.Generator().manual_seed(seed)
    codes0 = torch.randint(0, CFG.n_codes, (B, CFG.tokens_per_frame), generator=g)
    acts = torch.stack([torch.randint(0, 2, (B, CFG.clip_len - 1), generator=g) for _ in range(9)], -1)
    return sample(model, CFG, codes0, acts, temperature=temperature, top_p=top_p, generator=g), codes0, acts


def test_layout_round_trip():
    model = _model()
    r, codes0, acts = _rollout(model)
    assert r.tokens.shape == (3, CFG.seq_len(CFG.clip_len))
    frames = split_frames(r.tokens, CFG)
    assert frames.shape == (3, CFG.clip_len, CFG.tokens_per_frame)
    assert torch.equal(frames[:, 0], codes0)
    tokens, vis = interleave(frames, acts, CFG.n_codes)
    assert torch.equal(tokens, r.tokens)                      # the real actions were forced in, in order
    assert (r.tokens[~vis] >= CFG.n_codes).all() and (r.tokens[vis] < CFG.n_codes).all()


@pytest.mark.parametrize("top_p,temperature", [(0.8, 1.0), (1.0, 1.0), (0.9, 0.7)])
def test_sampler_and_scorer_agree(top_p, temperature):
    model = _model()
    r, _, _ = _rollout(model, top_p=top_p, temperature=temperature)
    lp = score(model, CFG, r.tokens, r.mask, temperature=temperature, top_p=top_p)
    assert torch.isfinite(lp).all()
    assert (lp - r.logps).abs().max().item() < 1e-4
    assert (r.logps[r.mask > 0] < 0).all()                   # real log-probs where generated
    from bench.ar_sampler_bench import old_score             # the throughput bench's baseline scores the same
    assert (old_score(model, CFG, r.tokens, r.mask, temperature, top_p) - lp).abs().max().item() < 1e-5


def test_kv_decoder_matches_the_full_forward():
    """The static-cache decoder, fed a prefix and then token by token (and in chunks), gives the logits of
    `transformers`' teacher-forced forward at every position; a bf16 copy stays close."""
    from rlir.models.kv_decoder import KVDecoder
    model = _model()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, CFG.vocab_size, (2, 20), generator=g)
    full = model(input_ids=ids).logits.float()
    dec = KVDecoder(model, 2, 20)
    assert torch.allclose(dec(ids[:, :7]), full[:, 6], atol=1e-5)
    for i in range(7, 12):
        assert torch.allclose(dec(ids[:, i:i + 1]), full[:, i], atol=1e-5)
    assert torch.allclose(dec(ids[:, 12:20]), full[:, 19], atol=1e-5)          # a chunk after the prefix
    with pytest.raises(ValueError, match="full"):
        dec(ids[:, :1])
    split = KVDecoder(model, 2, 20, fuse=False)          # the GPU layout: separate projections, scale on q
    assert torch.allclose(split(ids[:, :7]), full[:, 6], atol=1e-5)
    assert torch.allclose(split(ids[:, 7:8]), full[:, 7], atol=1e-5)
    import copy
    half = KVDecoder(copy.deepcopy(model).to(torch.bfloat16), 2, 20)
    assert (half(ids).float() - full[:, 19]).abs().max() < 0.1


def test_mask_excludes_action_tokens_and_prompt():
    model = _model()
    r, _, _ = _rollout(model)
    N, blk = CFG.tokens_per_frame, CFG.block
    assert r.mask[:, :N].sum() == 0                                       # frame 0 is the prompt
    for t in range(CFG.clip_len - 1):
        assert r.mask[:, t * blk + N: t * blk + N + TOKENS_PER_ACTION].sum() == 0   # action tokens
    assert r.mask.sum(1).eq((CFG.clip_len - 1) * N).all()


def test_action_tokens_get_no_gradient_from_the_rl_loss():
    model = _model()
    r, _, _ = _rollout(model)
    emb = model.get_input_embeddings()
    lp = score(model, CFG, r.tokens, r.mask)
    loss = -(lp * r.mask).sum()                       # any loss built on masked log-probs
    loss.backward()
    action_rows = emb.weight.grad[CFG.n_codes:]
    head_rows = model.lm_head.weight.grad[CFG.n_codes:]
    assert head_rows.abs().sum() == 0                # action tokens are never predicted
    assert emb.weight.grad[:CFG.n_codes].abs().sum() > 0
    assert action_rows.abs().sum() > 0               # they are inputs (context) -- that is fine ...
    lp_actions = lp[r.mask == 0]
    assert not lp_actions.requires_grad or lp_actions.abs().sum() == 0   # ... but carry no log-prob term


def test_top_p_keeps_the_nucleus():
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    lp = policy_logprobs(logits, 4, 1.0, 0.8)
    p = torch.softmax(logits, -1)[0]
    kept = torch.isfinite(lp[0])
    assert kept.tolist() == [True, True, False, False] and p[:2].sum() >= 0.8 > p[0]
    assert torch.allclose(lp.exp().sum(), torch.tensor(1.0))


def test_next_token_loss_learns_a_copy_task():
    torch.manual_seed(0)
    model = build_llama(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    codes = torch.randint(0, CFG.n_codes, (8, 1, CFG.tokens_per_frame)).repeat(1, CFG.clip_len, 1)  # a static scene
    acts = torch.zeros(8, CFG.clip_len, 9, dtype=torch.long)
    tokens, vis = interleave(codes, acts, CFG.n_codes)
    with torch.no_grad():
        first = float(next_token_loss(model, tokens, vis, CFG.tokens_per_frame))
    for _ in range(60):
        loss = next_token_loss(model, tokens, vis, CFG.tokens_per_frame)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0 and loss.item() < 0.5 * first


def test_paper_presets_match_table_4():
    table4 = {"300M": (1024, 4096, 16, 20), "700M": (2048, 4096, 32, 20), "1.2B": (2048, 8192, 32, 20)}
    counts = {}
    for name, dims in table4.items():
        assert tuple(PRESETS[name][k] for k in ("d_model", "mlp", "n_heads", "n_layers")) == dims
        c = ARConfig(n_codes=8192, tokens_per_frame=336, clip_len=16, **PRESETS[name])
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in build_llama(c).parameters())
    # LLaMA blocks with a gated MLP at Table 4's sizes (MineWorld's names are nominal): 0.35B, 0.87B, 1.38B
    assert 0.30e9 < counts["300M"] < 0.40e9 < 0.8e9 < counts["700M"] < 0.95e9 < 1.3e9 < counts["1.2B"] < 1.45e9


def test_tokenizer_round_trip_shapes():
    tok = VQTokenizer(TokenizerConfig(resolution=(16, 16), channels=(16, 16), dim=8, codebook_size=16)).eval()
    x = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    codes = tok.encode(x)
    assert codes.shape == (2, 3, 16) and codes.max() < 16
    y = tok.decode(codes)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, y) < 40).all()


def test_bf16_encoding_keeps_shapes_and_nearly_all_codes():
    """The WM cache's bf16 encoder (runs that train in bf16) picks the float32 encoder's code almost
    everywhere; the nearest-code search itself stays float32."""
    torch.manual_seed(0)
    tok = VQTokenizer(TokenizerConfig(resolution=(16, 16), channels=(16, 16), dim=8, codebook_size=16)).eval()
    x = torch.randint(0, 256, (40, 16, 16, 3), dtype=torch.uint8)
    c32, c16 = tok.encode(x), tok.encode(x, bf16=True)
    assert c16.shape == c32.shape and c16.dtype == c32.dtype
    assert (c16 == c32).float().mean() > 0.9
    ae = VQTokenizer(TokenizerConfig(resolution=(16, 16), channels=(16, 16), dim=8, quantize=False)).eval()
    z32, z16 = ae.encode(x), ae.encode(x, bf16=True)
    assert z16.dtype == torch.float32 and torch.allclose(z16, z32, atol=0.05 * z32.abs().max().item())


def test_the_world_models_cache_skips_the_test_split(tmp_path):
    from safetensors.torch import load_file
    from rlir.training.wm_trainer import encode_store
    s = _store(tmp_path)
    tok = VQTokenizer(TokenizerConfig(resolution=(16, 16), channels=(16, 16), dim=8, codebook_size=16)).eval()
    codes = encode_store(tok, s, tmp_path / "codes.safetensors", progress=False, bf16=True)
    assert sorted(codes) == sorted(s.ids("train") + s.ids("val")) and "e1" not in codes
    assert sorted(load_file(str(tmp_path / "codes.safetensors"))) == sorted(codes)
    assert all(c.dtype == torch.int16 and c.shape == (12, 16) for c in codes.values())


def _store(tmp_path, n=6, T=12, hw=(16, 16)):
    s = EpisodeStore.create(tmp_path / "data", metadata={"resolution": list(hw)})
    for k in range(n):
        s.add(f"e{k}", make_episode(T, hw, seed=k), split="val" if k == 0 else ("test" if k == 1 else "train"))
    return s


def test_train_tokenizer_then_world_model_and_generate(tmp_path):
    from rlir.training.wm_trainer import WMTrainConfig, load_ar_world_model, train_world_model
    from rlir.training.tokenizer_trainer import TokenizerTrainConfig, load_tokenizer, train_tokenizer
    _store(tmp_path)
    tcfg = TokenizerTrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "tok"), batch_size=8, steps=6,
                                eval_every=3, val_frames=8,
                                model=TokenizerConfig(resolution=(16, 16), channels=(16, 16), dim=8, codebook_size=16))
    s = train_tokenizer(tcfg, progress=False)
    assert s["steps"] == 6 and np.isfinite(s["best_val_psnr"])
    tok = load_tokenizer(tmp_path / "tok" / "checkpoints" / "best")
    assert tok.cfg.codebook_size == 16
    acfg = WMTrainConfig(data=str(tmp_path / "data"), codec=str(tmp_path / "tok" / "checkpoints" / "best"),
                         out=str(tmp_path / "wm"), batch_size=2, steps=4, eval_every=2, val_clips=2,
                         model=ARConfig(clip_len=4))
    s = train_world_model(acfg, progress=False, explicit_model=dict(d_model=32, mlp=64, n_heads=4, n_layers=1))
    assert s["steps"] == 4 and np.isfinite(s["best_val_loss"])
    model, mcfg, tok2 = load_ar_world_model(tmp_path / "wm" / "checkpoints" / "best")
    assert mcfg.n_codes == 16 and mcfg.tokens_per_frame == 16 and mcfg.d_model == 32
    # resume: a longer run continues from the last state, not from scratch
    acfg.steps = 6
    s = train_world_model(acfg, progress=False, explicit_model=dict(d_model=32, mlp=64, n_heads=4, n_layers=1))
    rows = [l for l in (tmp_path / "wm" / "metrics.jsonl").read_text().splitlines()]
    assert s["steps"] == 6 and len(rows) == 3
    with pytest.raises(RlirError, match="not 'world_model'"):
        load_ar_world_model(tmp_path / "tok" / "checkpoints" / "best")
    # rlir generate (Contract 4): frame 0 is the real frame, the actions are the clip's, frames 1.. are new
    from rlir.cli import main
    gen = tmp_path / "gen"
    assert main(["-q", "generate", "--world-model", str(tmp_path / "wm" / "checkpoints" / "best"), "--data",
                 str(tmp_path / "data"), "--out", str(gen), "--frames", "4", "--split", "test"]) == 0
    src, dst = EpisodeStore(tmp_path / "data"), EpisodeStore(gen)
    assert dst.ids("test") == ["e1-00000", "e1-00004", "e1-00008"]
    ep, real = dst.load("e1-00004"), src.load("e1").slice(4, 8)
    assert ep.frames.shape == (4, 16, 16, 3) and np.array_equal(ep.frames[0], real.frames[0])
    assert np.array_equal(ep.actions, real.actions) and not np.array_equal(ep.frames[1:], real.frames[1:])
    assert "psnr_frames_1_to_T" in __import__("json").loads((gen / "generate_summary.json").read_text())
    # --precision bf16 (AR: bfloat16 weights) is part of the clips' identity: a resume with float32 is refused
    args = ["-q", "generate", "--world-model", str(tmp_path / "wm" / "checkpoints" / "best"), "--data",
            str(tmp_path / "data"), "--out", str(tmp_path / "gen_bf16"), "--frames", "4", "--split", "test"]
    assert main(args + ["--precision", "bf16"]) == 0
    bf = EpisodeStore(tmp_path / "gen_bf16")
    assert bf.metadata["generated"]["precision"] == "bf16" and bf.ids("test") == dst.ids("test")
    assert bf.load("e1-00004").frames.shape == (4, 16, 16, 3)
    assert main(args) != 0 and len(EpisodeStore(tmp_path / "gen_bf16")) == 3


def test_generate_rejects_the_wrong_checkpoint_kind(tmp_path, capsys):
    from rlir.cli import main
    from rlir.utils.checkpoint import save_checkpoint
    _store(tmp_path)
    save_checkpoint(tmp_path / "idm", {"kind": "idm"}, {"model": {"w": torch.zeros(1)}})
    assert main(["-q", "generate", "--world-model", str(tmp_path / "idm"), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "gen")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is an 'idm' checkpoint, not 'world_model'" in err
    assert main(["-q", "wm", "train", "--paradigm", "diffusion", "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "wm")]) == 2


def test_sample_token_draws_from_the_scored_distribution():
    """sample_token (top-k head, inverse CDF) draws each token with the probability policy_logprobs gives
    it, returns that log-prob, and never leaves the nucleus; where the top-k head does not hold the
    nucleus (a flat distribution) the full sort decides, row by row: a batch mixing peaked and flat rows
    gets each row's own nucleus."""
    from rlir.models.ar_world_model import NUCLEUS_HEAD, sample_token
    g = torch.Generator().manual_seed(0)
    peaked = torch.randn(1, 1024, generator=g) * 4
    flat = torch.randn(1, 1024, generator=g) * 0.1
    for logits, top_p in ((peaked, 0.8), (peaked, 1.0), (flat, 0.8)):
        ref = policy_logprobs(logits, 1024, 1.0, top_p)[0]
        rows = logits.expand(20000, -1)
        tok, lp = sample_token(rows, 1024, 1.0, top_p, torch.Generator().manual_seed(1))
        assert torch.isfinite(ref[tok[:, 0]]).all()                           # inside the nucleus
        assert (lp[:, 0] - ref[tok[:, 0]]).abs().max() < 1e-4                # the scorer's log-prob
        freq = torch.bincount(tok[:, 0], minlength=1024).float() / len(tok)
        assert (freq - ref.exp()).abs().max() < 0.012                          # the scorer's probabilities
    # the flat case needs more than the head: its nucleus has far more than NUCLEUS_HEAD tokens
    assert torch.isfinite(policy_logprobs(flat, 1024, 1.0, 0.8)).sum() > NUCLEUS_HEAD
    with_sort = torch.log_softmax(peaked, -1).sort(-1, descending=True)[0].exp()
    assert int(((with_sort.cumsum(-1) - with_sort) < 0.8).sum()) == int(torch.isfinite(policy_logprobs(peaked, 1024, 1.0, 0.8)).sum())
    mixed = torch.cat([peaked, flat, peaked * 0.5, flat * 3])             # rows the head settles and rows it does not
    together = policy_logprobs(mixed, 1024, 1.0, 0.8)
    for r in range(len(mixed)):
        alone = policy_logprobs(mixed[r:r + 1], 1024, 1.0, 0.8)[0]
        s_ = torch.log_softmax(mixed[r], -1).sort(descending=True)[0].exp()
        assert int(((s_.cumsum(-1) - s_) < 0.8).sum()) == int(torch.isfinite(together[r]).sum())
        assert torch.equal(torch.isfinite(together[r]), torch.isfinite(alone))
        assert torch.allclose(together[r][torch.isfinite(alone)], alone[torch.isfinite(alone)])


@pytest.mark.parametrize("temperature,top_p", [(1.0, 0.8), (0.7, 0.9), (1.0, 1.0)])
def test_taken_logprobs_are_policy_logprobs_with_the_same_gradient(temperature, top_p):
    """The scorer's sparse path (the nucleus' logsumexp from the sorted head) gives the log-prob and the
    gradient of policy_logprobs(...).gather(taken), on rows the head settles, rows it does not (flat),
    and taken tokens outside the nucleus (kept in it, as policy_logprobs' `taken` does)."""
    from rlir.models.ar_world_model import taken_logprobs
    g = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.randn(5, 1030, generator=g) * 4, torch.randn(3, 1030, generator=g) * 0.1])
    taken = torch.cat([logits[:4, :1024].argmax(-1), torch.randint(0, 1024, (4,), generator=g)])
    taken[3] = logits[3, :1024].argmin()                            # far outside its nucleus
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    want = policy_logprobs(a, 1024, temperature, top_p, taken=taken).gather(-1, taken[:, None])[:, 0]
    got = taken_logprobs(b, 1024, temperature, top_p, taken)
    assert torch.allclose(got, want, atol=1e-5) and torch.isfinite(got).all()
    (want * torch.arange(1.0, 9.0)).sum().backward()
    (got * torch.arange(1.0, 9.0)).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
