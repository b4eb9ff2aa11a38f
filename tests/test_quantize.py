"""Vector quantizers: closed forms, brute-force references and hand-computed EMA steps."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.quantize import (
    ResidualVectorQuantizer,
    VectorQuantizer,
    bitrate,
    is_nearest,
    kmeans,
    laplace_smoothing,
    nearest_code,
    perplexity,
)


def _set_codebook(vq: VectorQuantizer, codebook: torch.Tensor) -> None:
    with torch.no_grad():
        vq.embedding.data.copy_(codebook)
        vq.embed_avg.copy_(codebook)
        vq.cluster_size.fill_(1.0)


# ---------------------------------------------------------------------------------------- straight-through
@pytest.mark.parametrize("ema", [True, False])
def test_straight_through_gradient_is_identity(ema):
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=4, codebook_size=16, ema=ema)
    z = torch.randn(2, 4, 7, requires_grad=True)
    codebook_before = vq.codebook.detach().clone()  # training mode: the EMA update comes after the lookup
    out = vq(z)
    g = torch.randn_like(z)
    out.quantized.backward(g)
    assert torch.equal(z.grad, g)
    # forward value is exactly the chosen codebook vectors
    expected = codebook_before[out.codes].movedim(-1, 1)
    assert torch.allclose(out.quantized, expected, atol=1e-6)


def test_rvq_straight_through_on_summed_output():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=3, n_q=3, codebook_size=8)
    z = torch.randn(2, 3, 5, requires_grad=True)
    out = rvq(z)
    g = torch.randn_like(z)
    out.quantized.backward(g)
    assert torch.allclose(z.grad, g)
    rvq.eval()  # (in training the EMA update follows the lookup, so compare in eval mode)
    out = rvq(z)
    assert torch.allclose(out.quantized, rvq.decode(out.codes), atol=1e-5)


# ------------------------------------------------------------------------------------------------- losses
def test_commitment_and_codebook_loss_values_by_hand():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.2, 0.1], [0.9, 0.6]]).t()[None]  # (1, D=2, T=2): vectors (0.2,0.1) and (0.9,0.6)
    # nearest: code 0 and code 1; squared errors: 0.04+0.01 and 0.01+0.16 → mean over 4 elements = 0.055
    sq_mean = (0.04 + 0.01 + 0.01 + 0.16) / 4
    ema = VectorQuantizer(2, 2, beta=0.25, ema=True).eval()
    _set_codebook(ema, codebook)
    out = ema(z)
    assert out.codes.tolist() == [[0, 1]]
    assert out.loss.item() == pytest.approx(0.25 * sq_mean, rel=1e-6)

    learned = VectorQuantizer(2, 2, beta=0.25, ema=False).eval()
    _set_codebook(learned, codebook)
    zz = z.clone().requires_grad_(True)
    out = learned(zz)
    assert out.loss.item() == pytest.approx(1.25 * sq_mean, rel=1e-6)
    out.loss.backward()
    # d/dz of β·mean((z − sg e)²) = β·2(z − e)/4 ; d/de of mean((sg z − e)²) = 2(e − z)/4 summed per code
    e_sel = torch.tensor([[0.0, 0.0], [1.0, 1.0]]).t()[None]
    assert torch.allclose(zz.grad, 0.25 * 2 * (z - e_sel) / 4, atol=1e-7)
    expected_e_grad = 2 * (e_sel - z)[0].t() / 4  # rows = codes 0 and 1 (each used once)
    assert torch.allclose(learned.embedding.grad, expected_e_grad, atol=1e-7)


def test_ema_codebook_gets_no_gradient_and_learned_one_does():
    z = torch.randn(2, 4, 6)
    assert not any(p.requires_grad for p in VectorQuantizer(4, 8, ema=True).parameters())
    assert [n for n, _ in VectorQuantizer(4, 8, ema=False).named_parameters()] == ["embedding"]
    out = VectorQuantizer(4, 8, ema=True)(z)
    assert not out.loss.requires_grad  # commitment against a constant z, no grad path


# ------------------------------------------------------------------------------------------ nearest lookup
@pytest.mark.float_path
def test_nearest_code_matches_brute_force():
    torch.manual_seed(1)
    vq = VectorQuantizer(dim=5, codebook_size=33).eval()
    z = torch.randn(3, 5, 4, 6)
    codes = vq.encode(z)
    assert codes.shape == (3, 4, 6) and codes.dtype == torch.long
    flat = z.movedim(1, -1).reshape(-1, 5)
    brute = torch.stack([min(range(33), key=lambda k: float(((v - vq.codebook[k]) ** 2).sum())) * torch.ones(())
                         for v in flat]).long()
    # brute force, the expanded square and cdist round differently: compare choices up to float rounding
    assert is_nearest(flat, vq.codebook, codes.reshape(-1)) and is_nearest(flat, vq.codebook, brute)
    assert is_nearest(flat, vq.codebook, torch.cdist(flat, vq.codebook).argmin(1))
    assert is_nearest(flat, vq.codebook, nearest_code(flat, vq.codebook))
    assert (codes.reshape(-1) == brute).float().mean() > 0.95  # and they are the same codes, ties aside


def test_is_nearest_accepts_ties_either_way_and_refuses_a_far_code():
    codebook = torch.tensor([[0.0], [1.0], [3.0]])
    z = torch.tensor([[0.5], [2.9], [-1.0]])  # 0.5: a tie between codes 0 and 1
    assert is_nearest(z, codebook, torch.tensor([0, 2, 0])) and is_nearest(z, codebook, torch.tensor([1, 2, 0]))
    assert not is_nearest(z, codebook, torch.tensor([0, 1, 0]))  # 2.9 is 0.01 from code 2, 3.61 from code 1
    nudged = z + torch.tensor([[1e-4], [0.0], [0.0]])  # no longer a tie: code 1 is nearer by 2e-4
    assert not is_nearest(nudged, codebook, torch.tensor([0, 2, 0]))


def test_codes_round_trip_equals_forward_value():
    torch.manual_seed(2)
    vq = VectorQuantizer(dim=4, codebook_size=16).eval()
    z = torch.randn(2, 4, 3, 5)
    assert torch.allclose(vq.decode(vq.encode(z)), vq(z).quantized, atol=1e-6)
    rvq = ResidualVectorQuantizer(dim=4, n_q=4, codebook_size=16).eval()
    z = torch.randn(2, 4, 9)
    codes = rvq.encode(z)
    assert codes.shape == (2, 4, 9)
    out = rvq(z)
    assert torch.equal(codes, out.codes)
    assert torch.allclose(rvq.decode(codes), out.quantized, atol=1e-5)
    assert torch.allclose(rvq.decode(rvq.encode(z, n_q=2)), rvq(z, n_q=2).quantized, atol=1e-5)


# -------------------------------------------------------------------------------------------------- EMA
def test_laplace_smoothing_closed_form():
    s = laplace_smoothing(torch.tensor([0.0, 3.0, 1.0]), epsilon=1.0)
    assert torch.allclose(s, torch.tensor([4 / 7, 16 / 7, 8 / 7]))
    assert s.sum().item() == pytest.approx(4.0)
    assert (s > 0).all()


def test_ema_update_matches_hand_computation():
    vq = VectorQuantizer(dim=1, codebook_size=3, decay=0.5, epsilon=0.1).train()
    _set_codebook(vq, torch.tensor([[0.0], [10.0], [-50.0]]))
    z = torch.tensor([[[1.0, 2.0, 9.0]]])  # (B=1, D=1, T=3) → codes 0, 0, 1; code 2 unused
    out = vq(z)
    assert out.codes.tolist() == [[0, 0, 1]]
    # counts n = [2, 1, 0], sums m = [3, 9, 0]
    n_ema = [0.5 * 1 + 0.5 * 2, 0.5 * 1 + 0.5 * 1, 0.5 * 1 + 0.5 * 0]  # [1.5, 1.0, 0.5]
    m_ema = [0.5 * 0 + 0.5 * 3, 0.5 * 10 + 0.5 * 9, 0.5 * -50 + 0.5 * 0]  # [1.5, 9.5, -25]
    total = sum(n_ema)  # 3.0
    smoothed = [(n + 0.1) / (total + 3 * 0.1) * total for n in n_ema]
    assert vq.cluster_size.tolist() == pytest.approx(n_ema)
    assert vq.embed_avg[:, 0].tolist() == pytest.approx(m_ema)
    assert vq.codebook[:, 0].tolist() == pytest.approx([m / s for m, s in zip(m_ema, smoothed)], rel=1e-6)
    # the quantized output of this step used the codebook from before the update
    assert out.quantized[0, 0].tolist() == pytest.approx([0.0, 0.0, 10.0])


def test_eval_mode_changes_nothing():
    torch.manual_seed(3)
    vq = VectorQuantizer(dim=3, codebook_size=8, dead_code_threshold=5.0, kmeans_init=True).eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(4, 3, 10))
    for k, v in vq.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_ema_training_moves_codes_to_the_data():
    torch.manual_seed(4)
    centres = torch.tensor([[3.0, 3.0], [-3.0, 3.0], [0.0, -4.0]])
    vq = VectorQuantizer(dim=2, codebook_size=3, decay=0.8).train()
    _set_codebook(vq, centres + 1.0)
    for _ in range(60):
        pts = centres[torch.randint(0, 3, (256,))] + 0.1 * torch.randn(256, 2)
        vq(pts.t()[None])
    assert torch.allclose(vq.codebook, centres, atol=0.1)


# ---------------------------------------------------------------------------------------- dead codes
def test_dead_code_restart_replaces_dead_codes_with_batch_vectors():
    torch.manual_seed(5)
    vq = VectorQuantizer(dim=2, codebook_size=6, decay=0.5, dead_code_threshold=0.75).train()
    far = torch.tensor([[0.0, 0.0]] + [[100.0 + i, 100.0] for i in range(5)])
    _set_codebook(vq, far)
    z = torch.randn(1, 2, 40)
    out = vq(z)
    assert (out.codes == 0).all()  # all data near code 0: codes 1..5 unused, EMA count 0.5 < 0.75
    assert out.metrics["restarted"].item() == 5
    flat = z[0].t()
    for k in range(1, 6):
        assert (flat == vq.codebook[k]).all(1).any(), "a restarted code must be a batch vector"
    assert torch.allclose(vq.cluster_size[1:], torch.full((5,), 0.75))
    # now the restarted codes are in the data and get used
    assert vq.eval()(z).metrics["usage"].item() > 1 / 6


def test_no_restart_without_threshold():
    vq = VectorQuantizer(dim=2, codebook_size=4, decay=0.5).train()
    _set_codebook(vq, torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]]))
    out = vq(torch.randn(1, 2, 30) * 0.1)
    assert out.metrics["restarted"].item() == 0
    assert vq.codebook[1:].abs().max() > 50


def test_kmeans_init_finds_clusters():
    torch.manual_seed(6)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    pts = centres.repeat(50, 1) + 0.05 * torch.randn(200, 2)
    found, bins = kmeans(pts, 4, iters=20)
    assert bins.sum() == 200
    assert torch.cdist(centres, found).min(1).values.max() < 0.1
    vq = VectorQuantizer(dim=2, codebook_size=4, kmeans_init=True, kmeans_iters=20).train()
    assert not bool(vq.initialized)
    out = vq(pts.t()[None])
    assert bool(vq.initialized)
    assert out.metrics["usage"].item() == 1.0
    assert torch.cdist(centres, vq.codebook).min(1).values.max() < 0.1


def test_perplexity_closed_forms():
    assert perplexity(torch.zeros(10, dtype=torch.long), 8).item() == pytest.approx(1.0)
    assert perplexity(torch.arange(8).repeat(3), 8).item() == pytest.approx(8.0, rel=1e-5)
    assert perplexity(torch.tensor([0, 1]), 8).item() == pytest.approx(2.0, rel=1e-5)


# --------------------------------------------------------------------------------------------- residual VQ
def test_rvq_residual_error_non_increasing_with_stages():
    torch.manual_seed(7)
    z = torch.randn(4, 6, 50)
    rvq = ResidualVectorQuantizer(dim=6, n_q=5, codebook_size=16, kmeans_init=True, kmeans_iters=10).train()
    rvq(z)  # k-means-initialises every stage on its own residual of this batch
    rvq.eval()
    errors = [float(((rvq(z, n_q=k).quantized - z) ** 2).mean()) for k in range(1, 6)]
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.7 * errors[0]
    assert errors[0] < float((z ** 2).mean())


def test_rvq_loss_is_mean_of_stage_losses():
    torch.manual_seed(8)
    rvq = ResidualVectorQuantizer(dim=3, n_q=3, codebook_size=8, ema=False).eval()
    z = torch.randn(2, 3, 5)
    with torch.no_grad():
        out = rvq(z)
    residual, stage_losses = z, []
    for layer in rvq.layers:
        with torch.no_grad():
            o = layer(residual)
        stage_losses.append(o.loss)
        residual = residual - o.quantized
    assert out.loss.item() == pytest.approx(torch.stack(stage_losses).mean().item(), rel=1e-5)


def test_quantizer_dropout_varies_n_q_in_training_only():
    torch.manual_seed(9)
    rvq = ResidualVectorQuantizer(dim=2, n_q=4, codebook_size=4, quantizer_dropout=True)
    z = torch.randn(1, 2, 8)
    seen = {rvq.train()(z).codes.shape[1] for _ in range(40)}
    assert seen == {1, 2, 3, 4}
    assert {rvq.eval()(z).codes.shape[1] for _ in range(5)} == {4}
    no_drop = ResidualVectorQuantizer(dim=2, n_q=4, codebook_size=4).train()
    assert {no_drop(z).codes.shape[1] for _ in range(10)} == {4}
    assert rvq.train()(z, n_q=2).codes.shape[1] == 2  # an explicit n_q wins over dropout


# ---------------------------------------------------------------------------------------------- bitrate
@pytest.mark.parametrize("n_q,kbps", [(2, 1.5), (4, 3.0), (8, 6.0), (16, 12.0), (32, 24.0)])
def test_bitrate_reproduces_encodec(n_q, kbps):
    assert bitrate(75, n_q, 1024) == pytest.approx(kbps * 1000)


def test_bitrate_per_codebook_and_errors():
    assert bitrate(75, 1, 1024) == 750
    assert bitrate(50, 4, 2048) == pytest.approx(50 * 4 * 11)
    with pytest.raises(ValueError):
        bitrate(75, 0, 1024)


# ------------------------------------------------------------------------------------------ bad input, io
def test_bad_inputs_give_clear_errors():
    vq = VectorQuantizer(dim=4, codebook_size=8)
    with pytest.raises(ValueError, match=r"\(B, D=4"):
        vq(torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="floating"):
        vq(torch.ones(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        vq.decode(torch.tensor([[8]]))
    with pytest.raises(TypeError, match="integer"):
        vq.decode(torch.zeros(1, 3))
    rvq = ResidualVectorQuantizer(dim=4, n_q=2, codebook_size=8)
    with pytest.raises(ValueError, match="n_q"):
        rvq(torch.randn(1, 4, 3), n_q=3)
    with pytest.raises(ValueError, match="stages"):
        rvq.decode(torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(ValueError):
        VectorQuantizer(dim=4, codebook_size=8, decay=1.0)


def test_state_dict_round_trip_keeps_codebook_and_statistics():
    torch.manual_seed(10)
    a = ResidualVectorQuantizer(dim=3, n_q=2, codebook_size=8, kmeans_init=True, kmeans_iters=3).train()
    z = torch.randn(2, 3, 20)
    a(z)
    b = ResidualVectorQuantizer(dim=3, n_q=2, codebook_size=8, kmeans_init=True, kmeans_iters=3)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    assert torch.equal(a.encode(z), b.encode(z))
    assert all(bool(layer.initialized) for layer in b.layers)
    assert math.isfinite(float(a(z).loss))


# ------------------------------------------------------------------------------------------ DDP (2 CPU ranks)
def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # different data and different RNG on each rank
    vq = VectorQuantizer(dim=2, codebook_size=4, decay=0.5, dead_code_threshold=0.9).train()
    _set_codebook(vq, torch.tensor([[0.0, 0.0], [5.0, 0.0], [50.0, 50.0], [60.0, 60.0]]))
    z = torch.randn(1, 2, 16) + 5.0 * torch.tensor([[[float(rank)], [0.0]]])
    vq(z)
    rvq = ResidualVectorQuantizer(dim=2, n_q=4, codebook_size=4, quantizer_dropout=True).train()
    n_q = [rvq(z).codes.shape[1] for _ in range(6)]
    torch.save({"codebook": vq.codebook, "size": vq.cluster_size, "z": z, "n_q": n_q}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_all_reduces_ema_statistics_and_agrees_on_restarts_and_dropout(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["codebook"], r1["codebook"]) and torch.equal(r0["size"], r1["size"])
    assert r0["n_q"] == r1["n_q"]
    # the EMA counted both ranks' batches (2 x 16 vectors, all near codes 0 and 1), not only the local 16
    assert float(r0["size"][:2].sum()) == pytest.approx(0.5 * 2 + 0.5 * 32)
    # codes 2 and 3 were dead (0.5 < 0.9): both ranks hold the same restarted vectors, taken from rank 0's batch
    flat0 = r0["z"][0].t()
    for k in (2, 3):
        assert (flat0 == r0["codebook"][k]).all(1).any()
