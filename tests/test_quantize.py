"""armm.quantize: nearest-code search, EMA codebook updates, data-dependent init, residual stacks."""

import pytest
import torch

from armm.quantize import ResidualVectorQuantizer, VectorQuantizer


def brute_force_codes(vectors: torch.Tensor, codebook: torch.Tensor) -> list[int]:
    return [min(range(len(codebook)), key=lambda k: ((v - codebook[k]) ** 2).sum().item()) for v in vectors]


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 4)])  # an audio frame sequence, an image grid
def test_codes_are_the_nearest_code_for_any_trailing_shape(shape):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=7, dim=3).eval()
    z = torch.randn(shape)
    codes = quantizer.codes(z)
    assert codes.shape == (shape[0], *shape[2:])
    vectors = z.movedim(1, -1).reshape(-1, 3)
    assert codes.flatten().tolist() == brute_force_codes(vectors, quantizer.codebook)
    torch.testing.assert_close(quantizer.lookup(codes), quantizer.codebook[codes].movedim(-1, 1))


def test_the_first_training_batch_starts_the_codes_at_its_k_means_centroids():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=4, dim=3, decay=1.0).train()  # decay 1: the EMA keeps the init
    centres = torch.tensor([[50.0, 0, 0], [0, 50, 0], [0, 0, 50], [-50, -50, -50]])
    points = centres.repeat_interleave(10, 0) + torch.randn(40, 3)  # four tight clusters, far from randn codes
    quantizer(points.T.reshape(1, 3, 40))
    nearest = torch.cdist(points, quantizer.codebook).argmin(1)
    for code in nearest.unique():  # Lloyd's fixed point: each used code is the mean of the vectors nearest to it
        torch.testing.assert_close(quantizer.codebook[code], points[nearest == code].mean(0))
    before = quantizer.codebook.clone()
    quantizer(torch.randn(2, 3, 10))  # later batches do not re-initialise
    torch.testing.assert_close(quantizer.codebook, before)


def test_ema_step_with_no_memory_moves_each_used_code_to_the_mean_of_its_vectors():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=6, dim=3, decay=0.0, dead_code_threshold=0.5).train()
    quantizer.initialized.fill_(True)  # keep the random codebook: the EMA step alone is under test
    z = torch.randn(2, 3, 4, 4)
    codes = quantizer.codes(z).flatten()
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    quantizer(z)
    for k in range(6):
        if (codes == k).any():
            torch.testing.assert_close(quantizer.codebook[k], vectors[codes == k].mean(0), rtol=1e-4, atol=1e-4)
        else:  # a dead code restarts at one of the batch's vectors
            assert (quantizer.codebook[k] == vectors).all(dim=1).any()


def test_loading_weights_marks_the_codebook_trained(tmp_path):
    trained = VectorQuantizer(codebook_size=4, dim=2).train()
    trained(torch.randn(3, 2, 5))
    fresh = VectorQuantizer(codebook_size=4, dim=2)
    assert "initialized" not in trained.state_dict()  # weight files stay as they were before the flag existed
    fresh.load_state_dict(trained.state_dict())
    assert bool(fresh.initialized)
    fresh.train()(torch.randn(3, 2, 5) * 100)
    assert not torch.equal(fresh.codebook, torch.zeros_like(fresh.codebook))
    assert fresh.codebook.abs().max() < 100 * 5  # moved by the EMA, not re-placed onto the new batch


def reference_residual_codes(z: torch.Tensor, codebooks: list[torch.Tensor]) -> torch.Tensor:
    """Greedy residual quantisation written out: each codebook takes the nearest code to what is left."""
    residual = z.movedim(1, -1).reshape(-1, z.shape[1]).clone()
    codes = []
    for codebook in codebooks:
        chosen = torch.tensor(brute_force_codes(residual, codebook))
        residual -= codebook[chosen]
        codes.append(chosen.view(z.shape[0], *z.shape[2:]))
    return torch.stack(codes, 1)


def test_residual_codes_match_greedy_residual_quantisation_and_lookup_sums_the_first_k():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(num_quantizers=3, codebook_size=8, dim=4).eval()
    z = torch.randn(2, 4, 6)
    codes = rvq.codes(z)
    assert codes.shape == (2, 3, 6)
    assert torch.equal(codes, reference_residual_codes(z, [layer.codebook for layer in rvq.layers]))
    for k in (1, 2, 3):
        expected = sum(rvq.layers[i].codebook[codes[:, i]].movedim(-1, 1) for i in range(k))
        torch.testing.assert_close(rvq.lookup(codes[:, :k]), expected)
    errors = [(z - rvq.lookup(codes[:, :k])).pow(2).sum() for k in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]  # every codebook removes some of what is left


def test_residual_forward_is_straight_through_and_equals_its_codes():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(num_quantizers=2, codebook_size=8, dim=4).eval()  # no EMA step between
    z = torch.randn(2, 4, 6, requires_grad=True)
    quantized, codes, commitment = rvq(z)
    torch.testing.assert_close(quantized, rvq.lookup(codes))
    quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    assert commitment.item() > 0


def test_a_residual_stack_needs_a_codebook():
    with pytest.raises(ValueError, match="num_quantizers"):
        ResidualVectorQuantizer(num_quantizers=0, codebook_size=8, dim=4)
